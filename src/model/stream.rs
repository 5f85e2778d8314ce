//! A stream of requests: as many in flight as the mesh has working nodes, each request whole
//! on one free node, so consecutive requests overlap on different nodes; results come back
//! in request order.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Model, ModelRun, RunOptions};
use crate::Result;
use crate::drac::Drac;
use crate::onnx::Value;

impl Model {
    /// Runs every request of `requests` (inputs by name), up to `in_flight` at once (at least
    /// one), each whole on a free node; returns their results in order.
    pub fn run_stream<I>(&self, drac: &Drac, requests: I, in_flight: usize) -> Vec<Result<ModelRun>>
    where
        I: IntoIterator<Item = HashMap<String, Value>>,
        I::IntoIter: Send,
    {
        let source = Mutex::new(requests.into_iter().enumerate());
        let results: Mutex<Vec<(usize, Result<ModelRun>)>> = Mutex::new(Vec::new());
        let options = RunOptions {
            max_nodes: 1,
            ..RunOptions::default()
        };
        std::thread::scope(|scope| {
            for _ in 0..in_flight.max(1) {
                scope.spawn(|| {
                    loop {
                        let next = source.lock().ok().and_then(|mut s| s.next());
                        let Some((i, inputs)) = next else { break };
                        let out = self.run_values(drac, &inputs, &options);
                        if let Ok(mut r) = results.lock() {
                            r.push((i, out));
                        }
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}
