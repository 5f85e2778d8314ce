//! Power states and energy: Off / Idle / Active at a frequency level, with
//! `P = P_static + P_dyn·(f/f_max)³` while active, transition latencies, and energy integrated
//! per node over (real or virtual) time.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The power figures of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerSpec {
    /// Power drawn while active at any frequency, in watts.
    pub static_w: f64,
    /// Additional power at the top frequency, in watts (scales with `(f/f_max)³`).
    pub dynamic_w: f64,
    /// Power while powered on and idle, in watts.
    pub idle_w: f64,
    /// Power while off, in watts.
    pub off_w: f64,
    /// Frequency levels as fractions of `f_max`, ascending; the last is 1.0.
    pub levels: Vec<f64>,
    /// Seconds from Off until the node can run work.
    pub wake_s: f64,
    /// Seconds from Idle until Off (the node draws idle power meanwhile).
    pub sleep_s: f64,
}

impl PowerSpec {
    /// Figures for a CPU node of `threads` threads (a share of a server socket).
    pub fn cpu(threads: usize) -> PowerSpec {
        let t = threads.max(1) as f64;
        PowerSpec {
            static_w: 4.0 * t,
            dynamic_w: 8.0 * t,
            idle_w: 2.0 * t,
            off_w: 0.0,
            levels: vec![0.5, 0.75, 1.0],
            wake_s: 0.002,
            sleep_s: 0.001,
        }
    }

    /// Figures for a discrete GPU.
    pub fn gpu() -> PowerSpec {
        PowerSpec {
            static_w: 60.0,
            dynamic_w: 240.0,
            idle_w: 30.0,
            off_w: 2.0,
            levels: vec![0.4, 0.6, 0.8, 1.0],
            wake_s: 0.05,
            sleep_s: 0.01,
        }
    }

    /// Figures for a simulated accelerator node.
    pub fn accelerator() -> PowerSpec {
        PowerSpec {
            static_w: 20.0,
            dynamic_w: 80.0,
            idle_w: 10.0,
            off_w: 0.5,
            levels: vec![0.5, 0.625, 0.75, 0.875, 1.0],
            wake_s: 0.01,
            sleep_s: 0.005,
        }
    }

    /// Checks the figures: finite, non-negative, levels ascending in (0, 1] ending at 1.
    pub fn validate(&self) -> Result<()> {
        let values = [
            self.static_w,
            self.dynamic_w,
            self.idle_w,
            self.off_w,
            self.wake_s,
            self.sleep_s,
        ];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::parse(
                "power spec",
                format!("{self:?}"),
                "figures must be finite and >= 0",
            ));
        }
        let ascending = self.levels.windows(2).all(|w| w[0] < w[1]);
        let in_range = self.levels.iter().all(|f| *f > 0.0 && *f <= 1.0);
        if self.levels.is_empty() || !ascending || !in_range || self.levels.last() != Some(&1.0) {
            return Err(Error::parse(
                "power spec",
                format!("{:?}", self.levels),
                "frequency levels must ascend within (0, 1] and end at 1.0",
            ));
        }
        Ok(())
    }

    /// The top frequency level.
    pub fn top_level(&self) -> usize {
        self.levels.len().saturating_sub(1)
    }

    /// Relative speed at `level` (compute time scales with 1 / speed).
    pub fn speed(&self, level: usize) -> f64 {
        self.levels.get(level).copied().unwrap_or(1.0)
    }

    /// Watts while active at `level`.
    pub fn active_w(&self, level: usize) -> f64 {
        let f = self.speed(level);
        self.static_w + self.dynamic_w * f * f * f
    }

    /// Watts in `state`.
    pub fn watts(&self, state: PowerState) -> f64 {
        match state {
            PowerState::Off => self.off_w,
            PowerState::Idle | PowerState::Waking | PowerState::Sleeping => self.idle_w,
            PowerState::Active { level } => self.active_w(level),
        }
    }

    /// Energy in joules of `seconds` of work at top speed when run at `level` instead
    /// (the work takes `seconds / speed` there).
    pub fn energy_at(&self, level: usize, seconds_at_top: f64) -> f64 {
        self.active_w(level) * seconds_at_top / self.speed(level)
    }
}

/// The power state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Powered off.
    Off,
    /// Powering on (takes `wake_s`).
    Waking,
    /// On, no work.
    Idle,
    /// Powering off (takes `sleep_s`).
    Sleeping,
    /// Running work at a frequency level.
    Active {
        /// Index into [`PowerSpec::levels`].
        level: usize,
    },
}

/// One node's power state over time, with the energy it has used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePower {
    /// The node's figures.
    pub spec: PowerSpec,
    state: PowerState,
    since_s: f64,
    energy_j: f64,
    active_s: f64,
    transitions: u64,
}

impl NodePower {
    /// A node in `state` at time `now_s`.
    pub fn new(spec: PowerSpec, state: PowerState, now_s: f64) -> NodePower {
        NodePower {
            spec,
            state,
            since_s: now_s,
            energy_j: 0.0,
            active_s: 0.0,
            transitions: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> PowerState {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> f64 {
        self.since_s
    }

    /// Accounts the energy of the current state up to `now_s` (no state change).
    pub fn advance(&mut self, now_s: f64) {
        let dt = (now_s - self.since_s).max(0.0);
        self.energy_j += self.spec.watts(self.state) * dt;
        if matches!(self.state, PowerState::Active { .. }) {
            self.active_s += dt;
        }
        self.since_s = self.since_s.max(now_s);
    }

    /// Moves to `state` at `now_s`, accounting the energy of the state left.
    pub fn set(&mut self, state: PowerState, now_s: f64) {
        self.advance(now_s);
        if state != self.state {
            self.transitions += 1;
        }
        self.state = state;
    }

    /// Seconds until the node can start work if asked at the current state (0 when on).
    pub fn ready_delay(&self) -> f64 {
        match self.state {
            PowerState::Off => self.spec.wake_s,
            // Powering off must finish before it can wake again.
            PowerState::Sleeping => self.spec.sleep_s + self.spec.wake_s,
            PowerState::Waking => self.spec.wake_s,
            PowerState::Idle | PowerState::Active { .. } => 0.0,
        }
    }

    /// Joules used so far (up to the last `advance` or `set`).
    pub fn energy_j(&self) -> f64 {
        self.energy_j
    }

    /// Seconds spent active so far.
    pub fn active_s(&self) -> f64 {
        self.active_s
    }

    /// Number of state changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_power_follows_the_cube_of_frequency() {
        let s = PowerSpec::accelerator();
        s.validate().unwrap();
        assert_eq!(s.active_w(s.top_level()), 100.0);
        assert!((s.active_w(0) - (20.0 + 80.0 * 0.125)).abs() < 1e-12);
        // Running slower costs less energy for the same work when the static part is small.
        assert!(s.energy_at(0, 1.0) < s.energy_at(s.top_level(), 1.0));
    }

    #[test]
    fn energy_integrates_over_states() {
        let mut p = NodePower::new(PowerSpec::accelerator(), PowerState::Idle, 0.0);
        p.set(PowerState::Active { level: 4 }, 1.0); // 1 s idle: 10 J
        p.set(PowerState::Idle, 3.0); // 2 s at 100 W: 200 J
        p.set(PowerState::Off, 4.0); // 1 s idle: 10 J
        p.advance(14.0); // 10 s off: 5 J
        assert!((p.energy_j() - 225.0).abs() < 1e-9, "{}", p.energy_j());
        assert!((p.active_s() - 2.0).abs() < 1e-12);
        assert_eq!(p.transitions(), 3);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = PowerSpec::gpu();
        s.levels = vec![0.5, 0.4, 1.0];
        assert!(s.validate().is_err());
        s.levels = vec![0.5];
        assert!(s.validate().is_err());
        let mut s = PowerSpec::cpu(2);
        s.idle_w = f64::NAN;
        assert!(s.validate().is_err());
    }
}
