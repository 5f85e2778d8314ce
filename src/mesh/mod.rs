//! The mesh: how far apart are these nodes, and what does moving N bytes cost?
//!
//! A [`MeshSpec`] describes a multi-dimensional mesh or torus (`--mesh 4x4`, `--mesh 4x4x2`,
//! `--torus`) with one [`LinkSpec`] for every neighbour link and one for the host links. A
//! [`Topology`] places every node at a coordinate, numbers the directed links, routes in
//! dimension order and prices uncontended transfers; a [`LinkSchedule`] adds contention by
//! keeping a busy-until time per link in virtual time.
//!
//! Modelling choices, in one place:
//! - Links are directed: every pair of neighbours has one link each way, so traffic in opposite
//!   directions never contends (full duplex, as NVLink, ICI or PCIe are).
//! - Every node has two directed host links, host→node and node→host. Host memory enters the
//!   mesh at the ingress node: `Host → Node(j)` is the ingress node's host→node link followed
//!   by the mesh route from the ingress to `j`, and the reverse for `Node(j) → Host`. A node
//!   whose host link was set with [`Topology::set_host_link`] (a real device's measured
//!   PCIe cost) talks to the host over its own host links instead.
//! - Transfers are cut-through: an uncontended transfer takes the sum of its links' latencies
//!   plus its bytes over the slowest link's bandwidth; under contention it holds every link of
//!   its route for `bytes / that link's bandwidth` from its start.
//! - A torus dimension of size 2 has a single link each way between its two nodes (the
//!   wraparound would join the same pair again), so it routes as a mesh dimension.

mod topology;
mod transfer;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use topology::Topology;
pub use transfer::LinkSchedule;

/// Most dimensions a mesh may have.
pub const MAX_DIMS: usize = 4;
/// Most nodes a mesh may have.
pub const MAX_MESH_NODES: usize = 4096;

/// Identifies one directed link of a [`Topology`], in `0..topology.link_count()`.
pub type LinkId = usize;

/// Bandwidth and latency of one directed link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Sustained bandwidth in bytes per second (positive; may be infinite).
    pub bandwidth_bytes_per_s: f64,
    /// Latency of one traversal in seconds (finite, not negative).
    pub latency_s: f64,
}

impl LinkSpec {
    /// Default mesh link between neighbours: 25 GB/s and 1 µs per hop.
    pub const DEFAULT_MESH: LinkSpec = LinkSpec {
        bandwidth_bytes_per_s: 25e9,
        latency_s: 1e-6,
    };
    /// Default host link at a node: 16 GB/s and 5 µs (PCIe 4.0 x16 class).
    pub const DEFAULT_HOST: LinkSpec = LinkSpec {
        bandwidth_bytes_per_s: 16e9,
        latency_s: 5e-6,
    };

    /// A link spec, refused unless the bandwidth is positive and the latency finite and
    /// not negative.
    pub fn new(bandwidth_bytes_per_s: f64, latency_s: f64) -> Result<LinkSpec> {
        let link = LinkSpec {
            bandwidth_bytes_per_s,
            latency_s,
        };
        link.validate("link")?;
        Ok(link)
    }

    /// Seconds to move `bytes` over this link alone: latency plus bytes over bandwidth.
    pub fn time(&self, bytes: u64) -> f64 {
        self.latency_s + self.occupancy(bytes)
    }

    /// Seconds the link is busy streaming `bytes` (bytes over bandwidth, no latency).
    pub fn occupancy(&self, bytes: u64) -> f64 {
        bytes as f64 / self.bandwidth_bytes_per_s
    }

    /// Fails unless the bandwidth is positive (not NaN) and the latency finite and >= 0.
    pub(crate) fn validate(&self, what: &'static str) -> Result<()> {
        // NaN is neither positive nor anything else, so it is refused too.
        if self.bandwidth_bytes_per_s.is_nan() || self.bandwidth_bytes_per_s <= 0.0 {
            return Err(Error::parse(
                what,
                format!("{:?}", self),
                format!(
                    "bandwidth {} B/s must be positive",
                    self.bandwidth_bytes_per_s
                ),
            ));
        }
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return Err(Error::parse(
                what,
                format!("{:?}", self),
                format!(
                    "latency {} s must be finite and not negative",
                    self.latency_s
                ),
            ));
        }
        Ok(())
    }
}

/// The shape of a mesh: its dimensions, wraparound, link costs and host ingress node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshSpec {
    /// Size of every dimension, x first (1 to [`MAX_DIMS`] entries, each at least 1).
    pub dims: Vec<usize>,
    /// Whether every dimension wraps around (a torus) instead of ending at its edges.
    pub torus: bool,
    /// Cost of every directed link between neighbours.
    pub link: LinkSpec,
    /// Cost of a host link where no measured cost was set for the node.
    pub host_link: LinkSpec,
    /// The node where host memory enters the mesh.
    pub ingress: usize,
}

impl MeshSpec {
    /// Parses `--mesh` dimensions such as `8x8`, `4x4x2` or `16`, with default links
    /// ([`LinkSpec::DEFAULT_MESH`], [`LinkSpec::DEFAULT_HOST`]) and ingress node 0.
    pub fn parse(dims: &str, torus: bool) -> Result<MeshSpec> {
        let text = dims.trim();
        let bad = |reason: String| Error::parse("mesh dimensions", dims, reason);
        if text.is_empty() {
            return Err(bad("expected sizes such as `8x8` or `4x4x2`".into()));
        }
        let mut sizes = Vec::with_capacity(MAX_DIMS);
        for (i, part) in text.split(['x', 'X']).enumerate() {
            let part = part.trim();
            if sizes.len() == MAX_DIMS {
                return Err(bad(format!("more than {MAX_DIMS} dimensions")));
            }
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!(
                    "dimension {} `{part}` is not a whole number",
                    i + 1
                )));
            }
            let size: usize = part.parse().map_err(|_| {
                bad(format!(
                    "dimension {} `{part}` is too large (at most {MAX_MESH_NODES} nodes)",
                    i + 1
                ))
            })?;
            if size == 0 {
                return Err(bad(format!("dimension {} is 0", i + 1)));
            }
            sizes.push(size);
        }
        node_count(&sizes).map_err(bad)?;
        Ok(MeshSpec {
            dims: sizes,
            torus,
            link: LinkSpec::DEFAULT_MESH,
            host_link: LinkSpec::DEFAULT_HOST,
            ingress: 0,
        })
    }

    /// A 1-D mesh (a line) of `n` nodes with default links and ingress node 0.
    pub fn line(n: usize) -> MeshSpec {
        MeshSpec {
            dims: vec![n],
            torus: false,
            link: LinkSpec::DEFAULT_MESH,
            host_link: LinkSpec::DEFAULT_HOST,
            ingress: 0,
        }
    }

    /// Number of nodes, or a typed error for a spec with bad dimensions or too many nodes.
    pub fn node_count(&self) -> Result<usize> {
        node_count(&self.dims)
            .map_err(|reason| Error::parse("mesh dimensions", self.dims_text(), reason))
    }

    /// Fails unless the dimensions, links and ingress make a mesh [`Topology::new`] accepts.
    pub fn validate(&self) -> Result<()> {
        let n = self.node_count()?;
        self.link.validate("mesh link")?;
        self.host_link.validate("host link")?;
        if self.ingress >= n {
            return Err(Error::parse(
                "mesh ingress node",
                self.ingress.to_string(),
                format!("the mesh {} has only {n} nodes", self.dims_text()),
            ));
        }
        Ok(())
    }

    /// The dimensions as written on the command line, e.g. `4x4x2`.
    pub fn dims_text(&self) -> String {
        let parts: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        parts.join("x")
    }
}

impl fmt::Display for MeshSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.torus { "torus" } else { "mesh" };
        write!(f, "{} {kind}", self.dims_text())
    }
}

/// Node count of `dims`, or why they are refused.
fn node_count(dims: &[usize]) -> std::result::Result<usize, String> {
    if dims.is_empty() {
        return Err("a mesh needs at least one dimension".into());
    }
    if dims.len() > MAX_DIMS {
        return Err(format!(
            "{} dimensions, at most {MAX_DIMS} are supported",
            dims.len()
        ));
    }
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        return Err(format!("dimension {} is 0", i + 1));
    }
    let too_many = || format!("more than {MAX_MESH_NODES} nodes, the most supported");
    let mut n: usize = 1;
    for &d in dims {
        n = n.checked_mul(d).ok_or_else(too_many)?;
    }
    if n > MAX_MESH_NODES {
        return Err(format!("{n} nodes, at most {MAX_MESH_NODES} are supported"));
    }
    Ok(n)
}

/// One end of a transfer: host memory or a mesh node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Host memory, which enters the mesh at the ingress node (or a node's own host link).
    Host,
    /// The mesh node with this index.
    Node(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_text_and_validation() {
        let spec = MeshSpec::parse("4x4x2", true).unwrap();
        assert_eq!(spec.dims_text(), "4x4x2");
        assert_eq!(spec.to_string(), "4x4x2 torus");
        assert_eq!(spec.node_count().unwrap(), 32);
        assert!(spec.validate().is_ok());
        assert_eq!(MeshSpec::line(3).to_string(), "3 mesh");
        assert!(MeshSpec::line(0).validate().is_err());
        assert!(LinkSpec::new(f64::INFINITY, 0.0).is_ok());
        assert!(LinkSpec::new(1e9, f64::INFINITY).is_err());
    }
}
