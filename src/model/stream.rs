//! A stream of requests: up to `in_flight` at once, each on its share of the working nodes —
//! whole on one free node when there are at least as many requests in flight as nodes, so
//! consecutive requests overlap on different nodes; with fewer in flight, a request may take
//! several nodes (a channel split of one image, a batch split). Results come back in request
//! order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Model, ModelRun, RunOptions};
use crate::Result;
use crate::drac::Drac;
use crate::onnx::Value;

impl Model {
    /// Runs every request of `requests` (inputs by name), up to `in_flight` at once (at least
    /// one), each on at most its share of the working nodes; returns their results in order.
    pub fn run_stream<I>(&self, drac: &Drac, requests: I, in_flight: usize) -> Vec<Result<ModelRun>>
    where
        I: IntoIterator<Item = HashMap<String, Value>>,
        I::IntoIter: Send,
    {
        let source = Mutex::new(requests.into_iter().enumerate());
        let results: Mutex<Vec<(usize, Result<ModelRun>)>> = Mutex::new(Vec::new());
        let in_flight = in_flight.max(1);
        let working = drac.node_states().iter().filter(|s| s.2.is_none()).count();
        let options = RunOptions {
            max_nodes: (working / in_flight).max(1),
            ..RunOptions::default()
        };
        std::thread::scope(|scope| {
            for _ in 0..in_flight {
                scope.spawn(|| {
                    loop {
                        let next = source.lock().ok().and_then(|mut s| s.next());
                        let Some((i, inputs)) = next else { break };
                        let out = self.run_shared(drac, &Arc::new(inputs), &options);
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
