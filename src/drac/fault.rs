//! Fault injection: a wrapper around a node's device that crashes it, slows it down or hangs
//! it at a chosen moment (after a number of executions), for failover tests and experiments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::node::{Device, DeviceInfo};
use crate::op::{Op, Pool2dParams};
use crate::tensor::{Tensor, TensorView};
use crate::{Error, Result};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// Every execution from then on fails (a GPU also loses its device).
    Crash,
    /// Executions take `factor` times as long.
    Slow(f64),
    /// Executions never return (until the controller shuts down).
    Hang,
}

/// A fault and when it strikes: before the node's `after_calls + 1`-th execution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// The kind of fault.
    pub kind: FaultKind,
    /// Executions that still succeed before it strikes.
    pub after_calls: usize,
}

impl Fault {
    /// A crash before the next execution.
    pub fn crash() -> Fault {
        Fault {
            kind: FaultKind::Crash,
            after_calls: 0,
        }
    }

    /// A hang before the next execution.
    pub fn hang() -> Fault {
        Fault {
            kind: FaultKind::Hang,
            after_calls: 0,
        }
    }

    /// A slow-down by `factor` from the next execution on.
    pub fn slow(factor: f64) -> Fault {
        Fault {
            kind: FaultKind::Slow(factor),
            after_calls: 0,
        }
    }

    /// The same fault, striking after `calls` more successful executions.
    pub fn after(mut self, calls: usize) -> Fault {
        self.after_calls = calls;
        self
    }
}

/// A device with an optional scheduled fault.
pub struct FaultyDevice {
    inner: Arc<dyn Device>,
    state: Arc<FaultState>,
    /// The inner device's lanes, each behind the same fault ([`Device::lanes`]).
    lanes: OnceLock<Vec<FaultyLane>>,
}

/// A scheduled fault and the executions counted towards it, shared by a device and its lanes.
struct FaultState {
    fault: Mutex<Option<(Fault, usize)>>,
    calls: AtomicUsize,
    cancel: Arc<AtomicBool>,
}

impl FaultyDevice {
    /// Wraps `inner`; hung executions give up when `cancel` is set.
    pub fn new(inner: Arc<dyn Device>, cancel: Arc<AtomicBool>) -> FaultyDevice {
        FaultyDevice {
            inner,
            state: Arc::new(FaultState {
                fault: Mutex::new(None),
                calls: AtomicUsize::new(0),
                cancel,
            }),
            lanes: OnceLock::new(),
        }
    }

    /// Schedules `fault`, counted from now.
    pub fn inject(&self, fault: Fault) {
        let now = self.state.calls.load(Ordering::SeqCst);
        if let Ok(mut f) = self.state.fault.lock() {
            *f = Some((fault, now + fault.after_calls));
        }
    }

    /// Whether a fault is scheduled (struck or still to strike).
    pub fn is_armed(&self) -> bool {
        self.state.fault.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    /// The wrapped device.
    fn device(&self) -> &dyn Device {
        self.inner.as_ref()
    }

    /// Runs `work`, one execution of the wrapped device, under the fault in force.
    fn run<R>(&self, work: impl FnOnce() -> Result<R>) -> Result<R> {
        self.state.run(self.device(), work)
    }
}

impl FaultState {
    /// The fault in force for the execution about to start, if any.
    fn active(&self) -> Option<FaultKind> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let f = self.fault.lock().ok()?;
        let (fault, from) = (*f)?;
        (call >= from).then_some(fault.kind)
    }

    /// Runs `work`, one execution of `device`, under the fault in force.
    fn run<R>(&self, device: &dyn Device, work: impl FnOnce() -> Result<R>) -> Result<R> {
        let id = device.info().id.clone();
        match self.active() {
            None => work(),
            Some(FaultKind::Crash) => {
                device.inject_device_loss();
                Err(Error::device(id, "crashed (injected fault)"))
            }
            Some(FaultKind::Hang) => {
                while !self.cancel.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(Error::device(
                    id,
                    "hung (injected fault), released at shutdown",
                ))
            }
            Some(FaultKind::Slow(factor)) => {
                let start = Instant::now();
                let out = work();
                let extra = start.elapsed().mul_f64((factor - 1.0).clamp(0.0, 1e3));
                std::thread::sleep(extra);
                out
            }
        }
    }
}

/// Lane `index` of a wrapped device, struck by the device's fault as the device itself is.
struct FaultyLane {
    inner: Arc<dyn Device>,
    index: usize,
    state: Arc<FaultState>,
}

impl FaultyLane {
    /// The inner device's lane (the device itself should it have lost its lanes).
    fn lane(&self) -> &dyn Device {
        self.inner
            .lanes()
            .get(self.index)
            .copied()
            .unwrap_or(self.inner.as_ref())
    }

    /// Runs `work`, one execution of the lane, under the device's fault.
    fn run<R>(&self, work: impl FnOnce() -> Result<R>) -> Result<R> {
        self.state.run(self.lane(), work)
    }
}

/// The [`Device`] methods of a fault wrapper around the device `$dev` (an expression of
/// `self`), every execution run through `self.run`.
macro_rules! faulty_device_methods {
    ($dev:ident) => {
        fn info(&self) -> &DeviceInfo {
            self.$dev().info()
        }

        fn run_batch(&self, body: &mut (dyn FnMut() + Send)) {
            self.$dev().run_batch(body)
        }

        fn run_beside(&self, work: &mut (dyn FnMut() + Send), here: &mut (dyn FnMut() + Send)) {
            self.$dev().run_beside(work, here)
        }

        fn keep_awake(&self, body: &mut (dyn FnMut() + Send)) {
            self.$dev().keep_awake(body)
        }

        fn launch(&self, work: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<()> {
            self.$dev().launch(work)
        }

        fn execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
            self.run(|| self.$dev().execute(op, inputs))
        }

        fn execute_into(&self, op: &Op, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<()> {
            self.run(|| self.$dev().execute_into(op, inputs, outputs))
        }

        fn execute_view(&self, op: &Op, inputs: &[TensorView<'_>], out: &mut [f32]) -> Result<()> {
            self.run(|| self.$dev().execute_view(op, inputs, out))
        }

        fn conv_accumulate(
            &self,
            op: &Op,
            inputs: &[&Tensor],
            output: &mut Tensor,
        ) -> Option<Result<()>> {
            // A device without the path answers `None`, counted as an execution all the same.
            self.run(|| self.$dev().conv_accumulate(op, inputs, output).transpose())
                .transpose()
        }

        fn conv_accumulate_view(
            &self,
            op: &Op,
            inputs: &[TensorView<'_>],
            out: &mut [f32],
        ) -> Option<Result<()>> {
            self.run(|| {
                self.$dev()
                    .conv_accumulate_view(op, inputs, out)
                    .transpose()
            })
            .transpose()
        }

        fn conv_max_pool(
            &self,
            conv: &Op,
            pool: &Pool2dParams,
            inputs: &[&Tensor],
        ) -> Option<Result<Tensor>> {
            self.run(|| self.$dev().conv_max_pool(conv, pool, inputs).transpose())
                .transpose()
        }

        fn time_resident(
            &self,
            op: &Op,
            inputs: &[&Tensor],
            reps: usize,
        ) -> Option<Result<Vec<f64>>> {
            self.$dev().time_resident(op, inputs, reps)
        }

        fn inject_device_loss(&self) {
            self.$dev().inject_device_loss();
        }
    };
}

impl Device for FaultyDevice {
    faulty_device_methods!(device);

    /// The GPU node within, while no fault is scheduled: a scheduled fault must see every op,
    /// so a run that keeps its values on the GPU goes op by op through the wrapper instead.
    /// A fault injected during a resident run strikes from the next run on (and that run's
    /// host steps).
    fn gpu(&self) -> Option<&crate::node::gpu::GpuDevice> {
        if self.is_armed() {
            None
        } else {
            self.inner.gpu()
        }
    }

    fn lanes(&self) -> Vec<&dyn Device> {
        let lanes = self.lanes.get_or_init(|| {
            (0..self.inner.lanes().len())
                .map(|index| FaultyLane {
                    inner: Arc::clone(&self.inner),
                    index,
                    state: Arc::clone(&self.state),
                })
                .collect()
        });
        lanes.iter().map(|l| l as &dyn Device).collect()
    }
}

impl Device for FaultyLane {
    faulty_device_methods!(lane);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conv2dParams;
    use crate::node::DeviceKind;
    use crate::tensor::DType;

    /// A device that records which of its methods were called, and answers each with a
    /// result of the right form.
    struct Recorder {
        info: DeviceInfo,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Recorder {
        fn new() -> Recorder {
            Recorder {
                info: DeviceInfo {
                    id: "rec0".into(),
                    kind: DeviceKind::Sim,
                    name: "recorder".into(),
                    backend: "none".into(),
                    threads: None,
                    memory_bytes: 1 << 20,
                    dtypes: vec![DType::F32],
                    driver: None,
                },
                calls: Mutex::new(Vec::new()),
            }
        }

        fn note(&self, name: &'static str) {
            self.calls.lock().unwrap().push(name);
        }
    }

    impl Device for Recorder {
        fn info(&self) -> &DeviceInfo {
            &self.info
        }

        fn execute(&self, _: &Op, _: &[&Tensor]) -> Result<Vec<Tensor>> {
            self.note("execute");
            Ok(Vec::new())
        }

        fn execute_into(&self, _: &Op, _: &[&Tensor], _: &mut [Tensor]) -> Result<()> {
            self.note("execute_into");
            Ok(())
        }

        fn execute_view(&self, _: &Op, _: &[TensorView<'_>], _: &mut [f32]) -> Result<()> {
            self.note("execute_view");
            Ok(())
        }

        fn conv_accumulate(&self, _: &Op, _: &[&Tensor], _: &mut Tensor) -> Option<Result<()>> {
            self.note("conv_accumulate");
            Some(Ok(()))
        }

        fn conv_accumulate_view(
            &self,
            _: &Op,
            _: &[TensorView<'_>],
            _: &mut [f32],
        ) -> Option<Result<()>> {
            self.note("conv_accumulate_view");
            Some(Ok(()))
        }

        fn conv_max_pool(&self, _: &Op, _: &Pool2dParams, _: &[&Tensor]) -> Option<Result<Tensor>> {
            self.note("conv_max_pool");
            Some(Tensor::from_f32([1], DType::F32, &[2.0]))
        }

        fn time_resident(&self, _: &Op, _: &[&Tensor], _: usize) -> Option<Result<Vec<f64>>> {
            self.note("time_resident");
            Some(Ok(vec![1.0]))
        }

        fn run_batch(&self, body: &mut (dyn FnMut() + Send)) {
            self.note("run_batch");
            body();
        }

        fn run_beside(&self, work: &mut (dyn FnMut() + Send), here: &mut (dyn FnMut() + Send)) {
            self.note("run_beside");
            work();
            here();
        }

        fn keep_awake(&self, body: &mut (dyn FnMut() + Send)) {
            self.note("keep_awake");
            body();
        }

        fn launch(&self, work: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<()> {
            self.note("launch");
            work();
            Ok(())
        }

        fn lanes(&self) -> Vec<&dyn Device> {
            self.note("lanes");
            Vec::new()
        }

        fn inject_device_loss(&self) {
            self.note("inject_device_loss");
        }
    }

    #[test]
    fn the_wrapper_forwards_every_method_and_a_crash_stops_the_executions() {
        let inner = Arc::new(Recorder::new());
        let dev = FaultyDevice::new(inner.clone(), Arc::new(AtomicBool::new(false)));
        let x = Tensor::from_f32([1], DType::F32, &[1.0]).unwrap();
        let conv = Op::Conv2d(Conv2dParams::default());
        let pool = Pool2dParams::new([1, 1]);
        let mut out = [x.clone()];
        let mut acc = x.clone();
        let mut ran = false;
        assert_eq!(dev.info().id, "rec0");
        dev.execute(&conv, &[&x]).unwrap();
        dev.execute_into(&conv, &[&x], &mut out).unwrap();
        dev.execute_view(&conv, &[x.view()], &mut [0.0]).unwrap();
        assert!(matches!(
            dev.conv_accumulate(&conv, &[&x], &mut acc),
            Some(Ok(()))
        ));
        assert!(matches!(
            dev.conv_accumulate_view(&conv, &[x.view()], &mut [0.0]),
            Some(Ok(()))
        ));
        let pooled = dev.conv_max_pool(&conv, &pool, &[&x]).unwrap().unwrap();
        assert_eq!(pooled.as_f32().unwrap(), [2.0]);
        assert_eq!(dev.time_resident(&conv, &[&x], 1).unwrap().unwrap(), [1.0]);
        dev.run_batch(&mut || ran = true);
        assert!(ran);
        let (mut a, mut b) = (false, false);
        dev.run_beside(&mut || a = true, &mut || b = true);
        assert!(a && b);
        let mut kept = false;
        dev.keep_awake(&mut || kept = true);
        assert!(kept);
        let launched = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&launched);
        dev.launch(Box::new(move || flag.store(true, Ordering::SeqCst)))
            .unwrap();
        assert!(launched.load(Ordering::SeqCst));
        assert!(dev.lanes().is_empty());
        assert!(dev.gpu().is_none());
        dev.inject_device_loss();
        let names = [
            "execute",
            "execute_into",
            "execute_view",
            "conv_accumulate",
            "conv_accumulate_view",
            "conv_max_pool",
            "time_resident",
            "run_batch",
            "run_beside",
            "keep_awake",
            "launch",
            "lanes",
            "inject_device_loss",
        ];
        assert_eq!(*inner.calls.lock().unwrap(), names);

        // A crash: the next execution fails without reaching the device, whose loss is
        // injected instead.
        inner.calls.lock().unwrap().clear();
        dev.inject(Fault::crash());
        assert!(dev.is_armed());
        let err = dev.execute(&conv, &[&x]).unwrap_err();
        assert!(
            err.to_string().contains("crashed (injected fault)"),
            "{err}"
        );
        assert!(dev.conv_max_pool(&conv, &pool, &[&x]).unwrap().is_err());
        assert_eq!(
            *inner.calls.lock().unwrap(),
            ["inject_device_loss", "inject_device_loss"]
        );
    }
}
