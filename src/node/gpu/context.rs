//! One opened GPU: the wgpu device and queue, the limits and features it was opened with,
//! bounded waits, error capture, and the failed flag that later work checks first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// Longest a single wait on the GPU may take before the node is marked failed
/// (`ACCELMESH_GPU_TIMEOUT_S` overrides it).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Optional features accelmesh enables when the adapter has them.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY
}

/// Overrides of the adapter's limits, used by tests to force the oversize paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Largest storage binding in bytes (clamped to the adapter's own limit).
    pub max_storage_binding: Option<u64>,
    /// Largest workgroup count per dispatch dimension (clamped to the adapter's own limit).
    pub max_workgroups_per_dim: Option<u32>,
    /// Largest buffer in bytes (clamped to the adapter's own limit).
    pub max_buffer: Option<u64>,
    /// Longest one wait on the GPU may take (default: `ACCELMESH_GPU_TIMEOUT_S` or 120 s).
    pub wait_timeout: Option<Duration>,
}

/// The limits the kernels plan against: the adapter's, possibly lowered by overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    /// Largest storage binding in bytes.
    pub max_storage_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Required alignment of a storage binding's offset, in bytes.
    pub storage_offset_alignment: u64,
    /// Workgroup memory per workgroup, in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
}

/// The wait timeout from `ACCELMESH_GPU_TIMEOUT_S`, or [`DEFAULT_WAIT_TIMEOUT`].
fn default_wait_timeout() -> Duration {
    std::env::var("ACCELMESH_GPU_TIMEOUT_S")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_WAIT_TIMEOUT)
}

/// An opened GPU shared by its node, its tensors and its kernels.
pub struct GpuContext {
    /// Node id, e.g. `gpu0`, used in errors.
    pub id: String,
    /// The adapter's description.
    pub adapter_info: wgpu::AdapterInfo,
    /// The logical device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Features enabled on the device.
    pub features: wgpu::Features,
    /// Limits the kernels plan against.
    pub limits: GpuLimits,
    /// Longest one wait may take.
    pub wait_timeout: Duration,
    failure: Arc<Mutex<Option<String>>>,
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("id", &self.id)
            .field("adapter", &self.adapter_info.name)
            .field("limits", &self.limits)
            .finish()
    }
}

impl GpuContext {
    /// Opens `adapter` with its own limits and the wanted features it has.
    pub fn open(id: String, adapter: &wgpu::Adapter, overrides: LimitOverrides) -> Result<Self> {
        let adapter_info = adapter.get_info();
        let features = adapter.features() & wanted_features();
        let required_limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("accelmesh"),
            required_features: features,
            required_limits: required_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::device(&id, format!("cannot open {}: {e}", adapter_info.name)))?;
        let limits = device.limits();
        let mut planned = GpuLimits {
            max_storage_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            max_buffer: limits.max_buffer_size,
            storage_offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
        };
        if let Some(b) = overrides.max_storage_binding {
            let b = b.max(planned.storage_offset_alignment.max(16));
            planned.max_storage_binding = planned.max_storage_binding.min(b);
        }
        if let Some(b) = overrides.max_buffer {
            planned.max_buffer = planned.max_buffer.min(b.max(256));
            planned.max_storage_binding = planned.max_storage_binding.min(planned.max_buffer);
        }
        if let Some(w) = overrides.max_workgroups_per_dim {
            planned.max_workgroups_per_dim = planned.max_workgroups_per_dim.min(w.max(1));
        }
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::new(AtomicBool::new(false));
        {
            let failure = Arc::clone(&failure);
            let failed = Arc::clone(&failed);
            device.set_device_lost_callback(move |reason, message| {
                failed.store(true, Ordering::SeqCst);
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
                }
            });
        }
        {
            let failure = Arc::clone(&failure);
            let failed = Arc::clone(&failed);
            device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
                failed.store(true, Ordering::SeqCst);
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert_with(|| format!("uncaptured GPU error: {err}"));
                }
            }));
        }
        let wait_timeout = overrides.wait_timeout.unwrap_or_else(default_wait_timeout);
        Ok(GpuContext {
            id,
            adapter_info,
            device,
            queue,
            features,
            limits: planned,
            wait_timeout,
            failure,
            failed,
        })
    }

    /// Whether the device has been marked failed (lost, timed out, or out of memory).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Why the device failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Marks the device failed with `reason` (the first reason is kept) and returns the error.
    pub fn fail(&self, reason: impl Into<String>) -> Error {
        let reason = reason.into();
        self.failed.store(true, Ordering::SeqCst);
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert_with(|| reason.clone());
        }
        Error::device(&self.id, format!("failed: {reason}"))
    }

    /// Fails fast when the device is already marked failed.
    pub fn check_alive(&self) -> Result<()> {
        if self.is_failed() {
            let why = self.failure().unwrap_or_else(|| "unknown reason".into());
            return Err(Error::device(&self.id, format!("failed earlier: {why}")));
        }
        Ok(())
    }

    /// Runs `work` inside validation and out-of-memory error scopes and turns a captured
    /// error into a typed one: out of memory marks the node failed, a validation error does
    /// not (it is a bug or bad input for this call only).
    pub fn scoped<T>(&self, what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        let validation_err = pollster::block_on(validation.pop());
        let oom_err = pollster::block_on(oom.pop());
        if let Some(e) = oom_err {
            return Err(self.fail(format!("out of memory during {what}: {e}")));
        }
        if let Some(e) = validation_err {
            return Err(Error::device(
                &self.id,
                format!("{what} rejected by the driver: {e}"),
            ));
        }
        result
    }

    /// Waits for `submission` (or all work) to finish, bounded by the wait timeout; a
    /// timeout or a lost device marks the node failed.
    pub fn wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check_alive()?;
        let outcome = self.device.poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: Some(self.wait_timeout),
        });
        match outcome {
            Ok(_) => self.check_alive(),
            Err(wgpu::PollError::Timeout) => Err(self.fail(format!(
                "GPU work did not finish within {:.1} s",
                self.wait_timeout.as_secs_f64()
            ))),
            Err(e) => Err(self.fail(format!("waiting for the GPU failed: {e}"))),
        }
    }

    /// Whether the device stores f16 natively in shaders.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether timestamp queries around passes are available.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }
}
