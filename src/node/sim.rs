//! Simulated nodes (`sim:…`): a declared speed per op class and dtype, memory and power
//! figures. They model time for the DRAC's simulator and never compute data.
//!
//! Spec syntax (one entry of a node spec): `sim:N` (N nodes of the default `accel` profile),
//! `sim:N:PROFILE`, `sim:PROFILE` (one node), and any of these followed by `/key=value`
//! overrides: `f32=`, `f16=`, `bf16=` (matmul GFLOP/s at that dtype; conv2d runs at 0.8 of
//! it), `mem=` (GiB), `watts=` (active watts at the top frequency; idle and static power scale
//! with it). Profiles: `accel` (8 TFLOP/s f32, 20 f16/bf16, 100 W), `lite` (3 / 8 TFLOP/s,
//! 30 W), `big` (30 / 80 TFLOP/s, 300 W), `cpu` (150 GFLOP/s f32, 192 W). Example:
//! `sim:16:lite/f16=9000/mem=4`.

use serde::Serialize;

use super::{Device, DeviceInfo, DeviceKind};
use crate::drac::perf_model::{OpClass, PerfModel, Rate};
use crate::drac::power::PowerSpec;
use crate::mesh::LinkSpec;
use crate::op::Op;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Most nodes one `sim:` entry may declare (a 64×64 mesh).
pub const MAX_SIM_NODES: usize = 4096;

/// Names of the built-in profiles, in the order [`SimNodeSpec::profile`] knows them.
pub const PROFILES: [&str; 4] = ["accel", "lite", "big", "cpu"];

/// The declared figures of one simulated node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimNodeSpec {
    /// Profile name (`accel`, `lite`, `big`, `cpu`), shown as the device name.
    pub name: String,
    /// Speed per (op class, dtype); classes or dtypes left out fall back as in the perf model.
    pub rates: Vec<(OpClass, DType, Rate)>,
    /// Memory the node may use, in bytes.
    pub memory_bytes: u64,
    /// Power figures.
    pub power: PowerSpec,
    /// Its own host link (a PCIe-class device link), or `None` to reach the host through the
    /// mesh's ingress node.
    pub host_link: Option<LinkSpec>,
}

/// Matmul and conv2d rates from matmul GFLOP/s per dtype (f32, f16, bf16).
fn rates(
    f32_gflops: f64,
    f16_gflops: f64,
    bf16_gflops: f64,
    overhead_s: f64,
) -> Vec<(OpClass, DType, Rate)> {
    let mut v = Vec::with_capacity(6);
    for (class, scale) in [(OpClass::MatMul, 1.0), (OpClass::Conv2d, 0.8)] {
        for (dtype, g) in [
            (DType::F32, f32_gflops),
            (DType::F16, f16_gflops),
            (DType::BF16, bf16_gflops),
        ] {
            v.push((
                class,
                dtype,
                Rate {
                    gflops: g * scale,
                    overhead_s,
                },
            ));
        }
    }
    v
}

const GIB: u64 = 1 << 30;

impl SimNodeSpec {
    /// A mid-range accelerator: 8 TFLOP/s f32, 20 TFLOP/s f16/bf16, 16 GiB, 100 W at the top
    /// level ([`PowerSpec::accelerator`]), its own 32 GB/s host link.
    pub fn accel() -> SimNodeSpec {
        SimNodeSpec {
            name: "accel".into(),
            rates: rates(8_000.0, 20_000.0, 20_000.0, 20e-6),
            memory_bytes: 16 * GIB,
            power: PowerSpec::accelerator(),
            host_link: Some(LinkSpec {
                bandwidth_bytes_per_s: 32e9,
                latency_s: 2e-6,
            }),
        }
    }

    /// A small, efficient accelerator: 3 TFLOP/s f32, 8 TFLOP/s f16/bf16, 8 GiB, 30 W at the
    /// top level (more flops per joule than `accel`, less speed), 16 GB/s host link.
    pub fn lite() -> SimNodeSpec {
        SimNodeSpec {
            name: "lite".into(),
            rates: rates(3_000.0, 8_000.0, 8_000.0, 20e-6),
            memory_bytes: 8 * GIB,
            power: PowerSpec {
                static_w: 6.0,
                dynamic_w: 24.0,
                idle_w: 3.0,
                off_w: 0.2,
                levels: vec![0.5, 0.625, 0.75, 0.875, 1.0],
                wake_s: 0.005,
                sleep_s: 0.003,
            },
            host_link: Some(LinkSpec {
                bandwidth_bytes_per_s: 16e9,
                latency_s: 2e-6,
            }),
        }
    }

    /// A large accelerator: 30 TFLOP/s f32, 80 TFLOP/s f16/bf16, 80 GiB, 300 W at the top
    /// level ([`PowerSpec::gpu`]), its own 64 GB/s host link.
    pub fn big() -> SimNodeSpec {
        SimNodeSpec {
            name: "big".into(),
            rates: rates(30_000.0, 80_000.0, 80_000.0, 10e-6),
            memory_bytes: 80 * GIB,
            power: PowerSpec::gpu(),
            host_link: Some(LinkSpec {
                bandwidth_bytes_per_s: 64e9,
                latency_s: 2e-6,
            }),
        }
    }

    /// A 16-thread CPU socket share: 150 GFLOP/s f32 (half precision converts, so slower),
    /// 32 GiB, [`PowerSpec::cpu`] of 16 threads, host memory in place (a 1 TB/s host link).
    pub fn cpu() -> SimNodeSpec {
        SimNodeSpec {
            name: "cpu".into(),
            rates: rates(150.0, 100.0, 120.0, 5e-6),
            memory_bytes: 32 * GIB,
            power: PowerSpec::cpu(16),
            host_link: Some(LinkSpec {
                bandwidth_bytes_per_s: 1e12,
                latency_s: 0.0,
            }),
        }
    }

    /// The built-in profile `name` (see [`PROFILES`]), or a spec error naming it.
    pub fn profile(name: &str) -> Result<SimNodeSpec> {
        match name {
            "accel" => Ok(SimNodeSpec::accel()),
            "lite" => Ok(SimNodeSpec::lite()),
            "big" => Ok(SimNodeSpec::big()),
            "cpu" => Ok(SimNodeSpec::cpu()),
            other => Err(Error::spec(
                other,
                format!(
                    "unknown sim profile: expected one of {}",
                    PROFILES.join(", ")
                ),
            )),
        }
    }

    /// The declared rate for (class, dtype), if declared.
    pub fn rate(&self, class: OpClass, dtype: DType) -> Option<Rate> {
        self.rates
            .iter()
            .find(|(c, d, _)| *c == class && *d == dtype)
            .map(|&(_, _, r)| r)
    }

    /// Declares this node's rates under `key` in `perf` (what calibration does for real nodes).
    pub fn install(&self, perf: &mut PerfModel, key: &str) {
        for &(class, dtype, rate) in &self.rates {
            perf.set_rate(key, class, dtype, rate);
        }
    }

    /// Checks the figures: at least one valid rate, memory above 0, valid power figures.
    pub fn validate(&self) -> Result<()> {
        if self.rates.is_empty() || self.rates.iter().any(|(_, _, r)| !r.is_valid()) {
            return Err(Error::spec(
                format!("sim:{}", self.name),
                "needs finite positive GFLOP/s and non-negative overheads",
            ));
        }
        if self.memory_bytes == 0 {
            return Err(Error::spec(
                format!("sim:{}", self.name),
                "memory must be above 0",
            ));
        }
        self.power.validate()?;
        if let Some(l) = self.host_link {
            LinkSpec::new(l.bandwidth_bytes_per_s, l.latency_s)?;
        }
        Ok(())
    }

    /// Applies one `key=value` override of the spec syntax; `entry` is the whole entry, for
    /// error messages.
    fn apply(&mut self, entry: &str, kv: &str) -> Result<()> {
        let Some((key, value)) = kv.split_once('=') else {
            return Err(Error::spec(
                entry,
                format!("override `{kv}` is not key=value (keys: f32, f16, bf16, mem, watts)"),
            ));
        };
        let number: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| {
                Error::spec(
                    entry,
                    format!("`{key}` value `{value}` is not a positive number"),
                )
            })?;
        match key {
            "f32" | "f16" | "bf16" => {
                let dtype = DType::parse(key)?;
                for (class, d, rate) in &mut self.rates {
                    if *d == dtype {
                        rate.gflops = number * if *class == OpClass::MatMul { 1.0 } else { 0.8 };
                    }
                }
            }
            "mem" => {
                let bytes = number * GIB as f64;
                if bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
                    return Err(Error::spec(
                        entry,
                        format!("memory `{value}` GiB is out of range"),
                    ));
                }
                self.memory_bytes = bytes as u64;
            }
            "watts" => {
                let scale = number / self.power.active_w(self.power.top_level()).max(1e-9);
                self.power.static_w *= scale;
                self.power.dynamic_w *= scale;
                self.power.idle_w *= scale;
            }
            other => {
                return Err(Error::spec(
                    entry,
                    format!("unknown override `{other}`: expected f32, f16, bf16, mem or watts"),
                ));
            }
        }
        Ok(())
    }
}

/// One parsed `sim:` entry: how many nodes, of which figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimSpec {
    /// Number of nodes.
    pub count: usize,
    /// Their figures.
    pub node: SimNodeSpec,
}

impl SimSpec {
    /// Parses `sim:N`, `sim:N:PROFILE`, `sim:PROFILE`, each optionally followed by
    /// `/key=value` overrides, or returns a spec error naming the bad text.
    pub fn parse(text: &str) -> Result<SimSpec> {
        let entry = text.trim().to_ascii_lowercase();
        let Some(rest) = entry
            .strip_prefix("sim:")
            .or(entry.strip_prefix("sim").filter(|r| r.is_empty()))
        else {
            return Err(Error::spec(
                text.trim(),
                "expected sim:N, sim:N:PROFILE or sim:PROFILE",
            ));
        };
        let mut pieces = rest.split('/');
        let head = pieces.next().unwrap_or("");
        let (count_text, profile) = match head.split_once(':') {
            Some((n, p)) => (Some(n), p),
            None if head.is_empty() => (None, "accel"),
            None if head.bytes().all(|b| b.is_ascii_digit()) => (Some(head), "accel"),
            None => (None, head),
        };
        let count = match count_text {
            None => 1,
            Some(n) => {
                let count: usize = n.parse().map_err(|_| {
                    Error::spec(
                        &entry,
                        format!("node count `{n}` is not a positive integer"),
                    )
                })?;
                if count == 0 || count > MAX_SIM_NODES {
                    return Err(Error::spec(
                        &entry,
                        format!("node count {count} must be between 1 and {MAX_SIM_NODES}"),
                    ));
                }
                count
            }
        };
        let mut node = SimNodeSpec::profile(profile).map_err(|_| {
            Error::spec(
                &entry,
                format!(
                    "unknown sim profile `{profile}`: expected one of {}",
                    PROFILES.join(", ")
                ),
            )
        })?;
        for kv in pieces {
            node.apply(&entry, kv)?;
        }
        node.validate()?;
        Ok(SimSpec { count, node })
    }

    /// The devices of this entry, numbered from `first` (ids `sim<first>`, `sim<first+1>`…).
    pub fn devices(&self, first: usize) -> Vec<SimDevice> {
        (0..self.count)
            .map(|i| SimDevice::new(first + i, self.node.clone()))
            .collect()
    }
}

/// A simulated node behind the [`Device`] trait: it reports its figures and refuses to compute.
#[derive(Debug, Clone)]
pub struct SimDevice {
    info: DeviceInfo,
    spec: SimNodeSpec,
}

impl SimDevice {
    /// Simulated node number `index` (id `sim<index>`) of figures `spec`.
    pub fn new(index: usize, spec: SimNodeSpec) -> SimDevice {
        let mut dtypes: Vec<DType> = Vec::new();
        for &(_, d, _) in &spec.rates {
            if !dtypes.contains(&d) {
                dtypes.push(d);
            }
        }
        SimDevice {
            info: DeviceInfo {
                id: format!("sim{index}"),
                kind: DeviceKind::Sim,
                name: spec.name.clone(),
                backend: "model".into(),
                threads: None,
                memory_bytes: spec.memory_bytes,
                dtypes,
                driver: None,
            },
            spec,
        }
    }

    /// The node's declared figures.
    pub fn spec(&self) -> &SimNodeSpec {
        &self.spec
    }
}

impl Device for SimDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn execute(&self, _op: &Op, _inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        Err(Error::device(
            &self.info.id,
            "simulated node models time and does not compute data",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_half_precision_is_faster_on_accelerators() {
        for name in PROFILES {
            let s = SimNodeSpec::profile(name).unwrap();
            s.validate().unwrap();
            assert_eq!(s.name, name);
        }
        let a = SimNodeSpec::accel();
        let f32 = a.rate(OpClass::MatMul, DType::F32).unwrap().gflops;
        let f16 = a.rate(OpClass::MatMul, DType::F16).unwrap().gflops;
        assert!(f16 > f32);
    }
}
