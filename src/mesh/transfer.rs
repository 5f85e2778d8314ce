//! [`LinkSchedule`]: contention on shared links, in virtual time.

use super::{Endpoint, LinkId, Topology};

/// Busy-until time of every link of a [`Topology`], so transfers that share a link serialize.
///
/// A transfer holds every link of its route from its start for `bytes / that link's
/// bandwidth`; it starts once all of them are free (and not before it is ready), and finishes
/// after the route's latencies plus `bytes` over the slowest link's bandwidth (cut-through).
#[derive(Clone, Debug)]
pub struct LinkSchedule {
    /// Virtual time in seconds until which each link is busy.
    busy: Vec<f64>,
    /// Bytes sent over each link.
    link_bytes: Vec<u64>,
    /// Bytes of all reserved transfers that crossed at least one link.
    bytes_moved: u64,
    /// Number of reserved transfers that crossed at least one link.
    transfers: u64,
    /// Route buffer reused by `reserve`.
    scratch: Vec<LinkId>,
}

impl LinkSchedule {
    /// An idle schedule for the links of `topo`.
    pub fn new(topo: &Topology) -> LinkSchedule {
        let links = topo.link_count();
        LinkSchedule {
            busy: vec![0.0; links],
            link_bytes: vec![0; links],
            bytes_moved: 0,
            transfers: 0,
            scratch: Vec::with_capacity(64),
        }
    }

    /// Reserves the route from `from` to `to` for `bytes` ready at `ready_s`, and returns its
    /// `(start, finish)` in seconds; a transfer with an empty route (`from == to`) starts and
    /// finishes at `ready_s` and holds nothing.
    ///
    /// # Panics
    /// If an endpoint is a node outside `topo`.
    pub fn reserve(
        &mut self,
        topo: &Topology,
        from: Endpoint,
        to: Endpoint,
        bytes: u64,
        ready_s: f64,
    ) -> (f64, f64) {
        self.fit(topo);
        let mut route = std::mem::take(&mut self.scratch);
        route.clear();
        topo.route_into(from, to, &mut route);
        if route.is_empty() {
            self.scratch = route;
            return (ready_s, ready_s);
        }
        let mut start = ready_s;
        let mut latency = 0.0;
        let mut bandwidth = f64::INFINITY;
        for &id in &route {
            start = start.max(self.busy[id]);
            let link = topo.link(id);
            latency += link.latency_s;
            bandwidth = bandwidth.min(link.bandwidth_bytes_per_s);
        }
        for &id in &route {
            self.busy[id] = start + topo.link(id).occupancy(bytes);
            self.link_bytes[id] = self.link_bytes[id].saturating_add(bytes);
        }
        self.bytes_moved = self.bytes_moved.saturating_add(bytes);
        self.transfers += 1;
        self.scratch = route;
        (start, start + latency + bytes as f64 / bandwidth)
    }

    /// The finish time [`LinkSchedule::reserve`] would return, without reserving anything.
    ///
    /// # Panics
    /// If an endpoint is a node outside `topo`.
    pub fn estimate(
        &self,
        topo: &Topology,
        from: Endpoint,
        to: Endpoint,
        bytes: u64,
        ready_s: f64,
    ) -> f64 {
        let mut start = ready_s;
        let mut latency = 0.0;
        let mut bandwidth = f64::INFINITY;
        let mut hops = 0usize;
        topo.for_each_link(from, to, |id| {
            start = start.max(self.busy_until(id));
            let link = topo.link(id);
            latency += link.latency_s;
            bandwidth = bandwidth.min(link.bandwidth_bytes_per_s);
            hops += 1;
        });
        if hops == 0 {
            ready_s
        } else {
            start + latency + bytes as f64 / bandwidth
        }
    }

    /// Frees every link and zeroes the totals.
    pub fn reset(&mut self) {
        self.busy.fill(0.0);
        self.link_bytes.fill(0);
        self.bytes_moved = 0;
        self.transfers = 0;
    }

    /// Virtual time in seconds until which `link` is busy (0 for a link never used).
    pub fn busy_until(&self, link: LinkId) -> f64 {
        self.busy.get(link).copied().unwrap_or(0.0)
    }

    /// Bytes sent over `link` since the last reset.
    pub fn link_bytes(&self, link: LinkId) -> u64 {
        self.link_bytes.get(link).copied().unwrap_or(0)
    }

    /// Total bytes of the transfers reserved since the last reset (those that crossed a link).
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_moved
    }

    /// Number of transfers reserved since the last reset (those that crossed a link).
    pub fn transfers(&self) -> u64 {
        self.transfers
    }

    /// Grows the per-link tables if `topo` has more links than the schedule was built for.
    #[inline]
    fn fit(&mut self, topo: &Topology) {
        let links = topo.link_count();
        if self.busy.len() < links {
            self.busy.resize(links, 0.0);
            self.link_bytes.resize(links, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{LinkSpec, MeshSpec};

    #[test]
    fn estimate_matches_reserve() {
        let topo = Topology::new(MeshSpec::parse("4x4", false).unwrap()).unwrap();
        let mut sched = LinkSchedule::new(&topo);
        let pairs = [(0, 15), (1, 14), (3, 12), (0, 15), (5, 5)];
        for (k, &(a, b)) in pairs.iter().enumerate() {
            let (from, to) = (Endpoint::Node(a), Endpoint::Node(b));
            let ready = k as f64 * 1e-7;
            let expected = sched.estimate(&topo, from, to, 1 << 20, ready);
            let (_, finish) = sched.reserve(&topo, from, to, 1 << 20, ready);
            assert_eq!(expected, finish);
        }
        assert_eq!(sched.transfers(), 4);
        assert_eq!(sched.bytes_moved(), 4 << 20);
    }

    #[test]
    fn busy_until_uses_each_links_own_bandwidth() {
        let mut spec = MeshSpec::line(2);
        spec.link = LinkSpec::new(1e9, 0.0).unwrap();
        spec.host_link = LinkSpec::new(5e8, 0.0).unwrap();
        let topo = Topology::new(spec).unwrap();
        let mut sched = LinkSchedule::new(&topo);
        let (start, finish) = sched.reserve(&topo, Endpoint::Host, Endpoint::Node(1), 1_000, 0.0);
        assert_eq!(start, 0.0);
        assert!((finish - 2e-6).abs() < 1e-15);
        let host = topo.host_to_node_link(0);
        let mesh = topo.neighbour_link(0, 0, true).unwrap();
        assert!((sched.busy_until(host) - 2e-6).abs() < 1e-15);
        assert!((sched.busy_until(mesh) - 1e-6).abs() < 1e-15);
        assert_eq!(sched.link_bytes(mesh), 1_000);
        sched.reset();
        assert_eq!(sched.busy_until(host), 0.0);
        assert_eq!(sched.bytes_moved(), 0);
    }
}
