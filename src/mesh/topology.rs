//! [`Topology`]: node coordinates, directed links, dimension-order routing and uncontended
//! transfer times.

use super::{Endpoint, LinkId, LinkSpec, MAX_DIMS, MeshSpec};
use crate::{Error, Result};

/// Marks a missing neighbour (the edge of a mesh, or a dimension of size 1).
const NONE: usize = usize::MAX;

/// A built mesh: every node's coordinate, every directed link and its cost, and routing.
///
/// Link ids: the directed neighbour links come first, numbered by source node, then
/// dimension, then direction (negative before positive), skipping missing neighbours; then
/// one host→node link per node ([`Topology::host_to_node_link`]), then one node→host link
/// per node ([`Topology::node_to_host_link`]).
#[derive(Clone, Debug)]
pub struct Topology {
    /// The spec the mesh was built from.
    spec: MeshSpec,
    /// Number of nodes.
    n: usize,
    /// Number of dimensions.
    ndims: usize,
    /// Index stride of every dimension (x has stride 1).
    strides: [usize; MAX_DIMS],
    /// Whether a dimension routes with wraparound (torus and size > 2).
    wraps: [bool; MAX_DIMS],
    /// Coordinates, `ndims` per node.
    coords: Vec<usize>,
    /// Outgoing neighbour link per `(node * ndims + dim) * 2 + positive`, or `NONE`.
    nbr_link: Vec<usize>,
    /// Neighbour node per `(node * ndims + dim) * 2 + positive`, or `NONE`.
    nbr_node: Vec<usize>,
    /// Cost of every link, by id.
    links: Vec<LinkSpec>,
    /// Source and destination of every link, by id.
    ends: Vec<(Endpoint, Endpoint)>,
    /// Number of neighbour links (host links start here).
    mesh_links: usize,
    /// Whether a node talks to the host over its own host links (a measured cost was set).
    direct_host: Vec<bool>,
}

impl Topology {
    /// Builds the mesh of `spec`, or a typed error naming its bad dimensions, link or ingress.
    pub fn new(spec: MeshSpec) -> Result<Topology> {
        spec.validate()?;
        let n = spec.node_count()?;
        let ndims = spec.dims.len();
        let mut strides = [0usize; MAX_DIMS];
        let mut wraps = [false; MAX_DIMS];
        let mut stride = 1;
        for (d, &size) in spec.dims.iter().enumerate() {
            strides[d] = stride;
            stride *= size;
            wraps[d] = spec.torus && size > 2;
        }

        let mut coords = Vec::with_capacity(n * ndims);
        for node in 0..n {
            let mut rest = node;
            for &size in &spec.dims {
                coords.push(rest % size);
                rest /= size;
            }
        }

        let slots = n * ndims * 2;
        let mut nbr_link = vec![NONE; slots];
        let mut nbr_node = vec![NONE; slots];
        let mut links = Vec::with_capacity(slots + 2 * n);
        let mut ends = Vec::with_capacity(slots + 2 * n);
        for node in 0..n {
            for d in 0..ndims {
                let size = spec.dims[d];
                let c = coords[node * ndims + d];
                let base = node - c * strides[d];
                // Negative direction, then positive.
                let neg = if c > 0 {
                    Some(c - 1)
                } else if wraps[d] {
                    Some(size - 1)
                } else {
                    None
                };
                let pos = if c + 1 < size {
                    Some(c + 1)
                } else if wraps[d] {
                    Some(0)
                } else {
                    None
                };
                for (dir, target) in [neg, pos].into_iter().enumerate() {
                    if let Some(t) = target {
                        let other = base + t * strides[d];
                        let slot = (node * ndims + d) * 2 + dir;
                        nbr_link[slot] = links.len();
                        nbr_node[slot] = other;
                        links.push(spec.link);
                        ends.push((Endpoint::Node(node), Endpoint::Node(other)));
                    }
                }
            }
        }
        let mesh_links = links.len();
        for node in 0..n {
            links.push(spec.host_link);
            ends.push((Endpoint::Host, Endpoint::Node(node)));
        }
        for node in 0..n {
            links.push(spec.host_link);
            ends.push((Endpoint::Node(node), Endpoint::Host));
        }

        Ok(Topology {
            spec,
            n,
            ndims,
            strides,
            wraps,
            coords,
            nbr_link,
            nbr_node,
            links,
            ends,
            mesh_links,
            direct_host: vec![false; n],
        })
    }

    /// The spec the mesh was built from.
    pub fn spec(&self) -> &MeshSpec {
        &self.spec
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the mesh has no nodes (never true for a built topology).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of dimensions.
    pub fn ndims(&self) -> usize {
        self.ndims
    }

    /// Coordinate of `node`, x first.
    ///
    /// # Panics
    /// If `node >= self.len()`.
    pub fn coord(&self, node: usize) -> &[usize] {
        assert!(
            node < self.n,
            "node {node} outside a mesh of {} nodes",
            self.n
        );
        &self.coords[node * self.ndims..(node + 1) * self.ndims]
    }

    /// The node at `coord`, or `None` if it has the wrong length or lies outside the mesh.
    pub fn node_at(&self, coord: &[usize]) -> Option<usize> {
        if coord.len() != self.ndims {
            return None;
        }
        let mut node = 0;
        for (d, &c) in coord.iter().enumerate() {
            if c >= self.spec.dims[d] {
                return None;
            }
            node += c * self.strides[d];
        }
        Some(node)
    }

    /// Fails unless `node` is a node of this mesh; for indices that come from user input.
    pub fn check_node(&self, node: usize) -> Result<()> {
        if node < self.n {
            Ok(())
        } else {
            Err(Error::parse(
                "mesh node",
                node.to_string(),
                format!("the {} has only {} nodes", self.spec, self.n),
            ))
        }
    }

    /// The node where host memory enters the mesh.
    pub fn ingress(&self) -> usize {
        self.spec.ingress
    }

    /// Number of directed links: neighbour links (one each way) plus two host links per node
    /// (host→node and node→host).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Number of directed neighbour links; host link ids start here.
    pub fn mesh_link_count(&self) -> usize {
        self.mesh_links
    }

    /// Id of the host→node link of `node`.
    ///
    /// # Panics
    /// If `node >= self.len()`.
    pub fn host_to_node_link(&self, node: usize) -> LinkId {
        assert!(
            node < self.n,
            "node {node} outside a mesh of {} nodes",
            self.n
        );
        self.mesh_links + node
    }

    /// Id of the node→host link of `node`.
    ///
    /// # Panics
    /// If `node >= self.len()`.
    pub fn node_to_host_link(&self, node: usize) -> LinkId {
        assert!(
            node < self.n,
            "node {node} outside a mesh of {} nodes",
            self.n
        );
        self.mesh_links + self.n + node
    }

    /// The link leaving `node` along dimension `dim` in the positive or negative direction,
    /// if that neighbour exists.
    pub fn neighbour_link(&self, node: usize, dim: usize, positive: bool) -> Option<LinkId> {
        if node >= self.n || dim >= self.ndims {
            return None;
        }
        let id = self.nbr_link[(node * self.ndims + dim) * 2 + usize::from(positive)];
        (id != NONE).then_some(id)
    }

    /// Source and destination of link `id`.
    ///
    /// # Panics
    /// If `id >= self.link_count()`.
    pub fn link_endpoints(&self, id: LinkId) -> (Endpoint, Endpoint) {
        self.ends[id]
    }

    /// Cost of link `id`.
    ///
    /// # Panics
    /// If `id >= self.link_count()`.
    pub fn link(&self, id: LinkId) -> LinkSpec {
        self.links[id]
    }

    /// Whether `node` talks to the host over its own host links (set by
    /// [`Topology::set_host_link`]) rather than through the ingress node.
    pub fn has_direct_host_link(&self, node: usize) -> bool {
        self.direct_host.get(node).copied().unwrap_or(false)
    }

    /// Sets the measured host↔device cost of a real node, both directions: from now on
    /// `Host ↔ Node(node)` goes over this direct link, not through the ingress node.
    ///
    /// # Panics
    /// If `node >= self.len()` or `link` has a non-positive bandwidth or a negative or
    /// non-finite latency; [`Topology::try_set_host_link`] returns an error instead.
    pub fn set_host_link(&mut self, node: usize, link: LinkSpec) {
        if let Err(e) = self.try_set_host_link(node, link, link) {
            panic!("set_host_link: {e}");
        }
    }

    /// Sets the measured host→node and node→host costs of `node`, or a typed error for a
    /// node outside the mesh or an invalid link.
    pub fn try_set_host_link(
        &mut self,
        node: usize,
        to_node: LinkSpec,
        to_host: LinkSpec,
    ) -> Result<()> {
        self.check_node(node)?;
        to_node.validate("host link")?;
        to_host.validate("host link")?;
        let down = self.host_to_node_link(node);
        let up = self.node_to_host_link(node);
        self.links[down] = to_node;
        self.links[up] = to_host;
        self.direct_host[node] = true;
        Ok(())
    }

    /// The links of the route from `from` to `to`, in order (empty when `from == to`).
    ///
    /// # Panics
    /// If an endpoint is a node outside the mesh.
    pub fn route(&self, from: Endpoint, to: Endpoint) -> Vec<LinkId> {
        let mut out = Vec::with_capacity(self.hops(from, to));
        self.for_each_link(from, to, |id| out.push(id));
        out
    }

    /// Appends the route from `from` to `to` to `out` (not cleared first), without allocating
    /// once `out` has grown.
    ///
    /// # Panics
    /// If an endpoint is a node outside the mesh.
    pub fn route_into(&self, from: Endpoint, to: Endpoint, out: &mut Vec<LinkId>) {
        self.for_each_link(from, to, |id| out.push(id));
    }

    /// Calls `f` with every link of the route from `from` to `to`, in order.
    ///
    /// Routing is dimension order (x first, then y, ...); on a torus each dimension goes the
    /// shorter way round, the positive direction on ties. `Host` enters and leaves through
    /// the ingress node's host links, except for a node with a direct host link.
    ///
    /// # Panics
    /// If an endpoint is a node outside the mesh.
    pub fn for_each_link(&self, from: Endpoint, to: Endpoint, mut f: impl FnMut(LinkId)) {
        match (from, to) {
            (Endpoint::Host, Endpoint::Host) => {}
            (Endpoint::Host, Endpoint::Node(j)) => {
                self.assert_node(j);
                if self.direct_host[j] {
                    f(self.mesh_links + j);
                } else {
                    let ingress = self.spec.ingress;
                    f(self.mesh_links + ingress);
                    self.mesh_route(ingress, j, &mut f);
                }
            }
            (Endpoint::Node(i), Endpoint::Host) => {
                self.assert_node(i);
                if self.direct_host[i] {
                    f(self.mesh_links + self.n + i);
                } else {
                    let ingress = self.spec.ingress;
                    self.mesh_route(i, ingress, &mut f);
                    f(self.mesh_links + self.n + ingress);
                }
            }
            (Endpoint::Node(i), Endpoint::Node(j)) => {
                self.assert_node(i);
                self.assert_node(j);
                self.mesh_route(i, j, &mut f);
            }
        }
    }

    /// Number of links on the route from `from` to `to`.
    ///
    /// # Panics
    /// If an endpoint is a node outside the mesh.
    pub fn hops(&self, from: Endpoint, to: Endpoint) -> usize {
        match (from, to) {
            (Endpoint::Host, Endpoint::Host) => 0,
            (Endpoint::Host, Endpoint::Node(j)) | (Endpoint::Node(j), Endpoint::Host) => {
                self.assert_node(j);
                if self.direct_host[j] {
                    1
                } else {
                    1 + self.distance(self.spec.ingress, j)
                }
            }
            (Endpoint::Node(i), Endpoint::Node(j)) => self.distance(i, j),
        }
    }

    /// Uncontended cut-through time in seconds to move `bytes` from `from` to `to`: the sum
    /// of the route's link latencies plus `bytes` over its slowest link's bandwidth; 0 when
    /// `from == to`.
    ///
    /// # Panics
    /// If an endpoint is a node outside the mesh.
    pub fn transfer_time(&self, from: Endpoint, to: Endpoint, bytes: u64) -> f64 {
        let (latency, bandwidth, hops) = self.route_cost(from, to);
        if hops == 0 {
            0.0
        } else {
            latency + bytes as f64 / bandwidth
        }
    }

    /// Sum of latencies, slowest bandwidth and link count of the route from `from` to `to`
    /// (bandwidth is infinite for an empty route).
    pub(crate) fn route_cost(&self, from: Endpoint, to: Endpoint) -> (f64, f64, usize) {
        let mut latency = 0.0;
        let mut bandwidth = f64::INFINITY;
        let mut hops = 0;
        self.for_each_link(from, to, |id| {
            let link = &self.links[id];
            latency += link.latency_s;
            bandwidth = bandwidth.min(link.bandwidth_bytes_per_s);
            hops += 1;
        });
        (latency, bandwidth, hops)
    }

    /// Hop count between nodes `a` and `b` (Manhattan distance, with wraparound on a torus).
    ///
    /// # Panics
    /// If `a` or `b` is outside the mesh.
    pub fn distance(&self, a: usize, b: usize) -> usize {
        self.assert_node(a);
        self.assert_node(b);
        let ca = &self.coords[a * self.ndims..(a + 1) * self.ndims];
        let cb = &self.coords[b * self.ndims..(b + 1) * self.ndims];
        let mut hops = 0;
        for d in 0..self.ndims {
            hops += self.step(d, ca[d], cb[d]).1;
        }
        hops
    }

    /// `nodes` sorted by hop count from `from`, ties by node index.
    ///
    /// # Panics
    /// If `from` or one of `nodes` is outside the mesh.
    pub fn nearest_first(&self, from: usize, nodes: &[usize]) -> Vec<usize> {
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable_by_key(|&node| (self.distance(from, node), node));
        sorted
    }

    /// Direction (0 negative, 1 positive) and step count to go from `a` to `b` along `dim`.
    #[inline]
    fn step(&self, dim: usize, a: usize, b: usize) -> (usize, usize) {
        if self.wraps[dim] {
            let size = self.spec.dims[dim];
            let forward = (b + size - a) % size;
            let backward = (size - forward) % size;
            if forward <= backward {
                (1, forward)
            } else {
                (0, backward)
            }
        } else if b >= a {
            (1, b - a)
        } else {
            (0, a - b)
        }
    }

    /// Calls `f` with every neighbour link of the dimension-order route from `a` to `b`.
    #[inline]
    fn mesh_route(&self, a: usize, b: usize, f: &mut impl FnMut(LinkId)) {
        let nd = self.ndims;
        let mut cur = a;
        for d in 0..nd {
            // Only dimensions before `d` have moved, so `cur` still has `a`'s coordinate in `d`.
            let (dir, steps) = self.step(d, self.coords[a * nd + d], self.coords[b * nd + d]);
            for _ in 0..steps {
                let slot = (cur * nd + d) * 2 + dir;
                f(self.nbr_link[slot]);
                cur = self.nbr_node[slot];
            }
        }
        debug_assert_eq!(cur, b);
    }

    /// Panics with a clear message unless `node` is a node of this mesh.
    #[inline]
    fn assert_node(&self, node: usize) {
        assert!(
            node < self.n,
            "node {node} outside a mesh of {} nodes",
            self.n
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(dims: &str, torus: bool) -> Topology {
        Topology::new(MeshSpec::parse(dims, torus).unwrap()).unwrap()
    }

    #[test]
    fn link_counts() {
        // 4x4 mesh: 2 * (3*4 + 3*4) = 48 directed neighbour links, plus 2 * 16 host links.
        let t = topo("4x4", false);
        assert_eq!(t.mesh_link_count(), 48);
        assert_eq!(t.link_count(), 48 + 32);
        // 4x4 torus: 4 links out of every node.
        let t = topo("4x4", true);
        assert_eq!(t.mesh_link_count(), 64);
        // A size-2 torus dimension has one link each way, size 1 none.
        let t = topo("2x1", true);
        assert_eq!(t.mesh_link_count(), 2);
        let t = topo("1", false);
        assert_eq!(t.mesh_link_count(), 0);
        assert_eq!(t.link_count(), 2);
    }

    #[test]
    fn link_ids_follow_the_documented_layout() {
        let t = topo("3x2", false);
        for id in 0..t.mesh_link_count() {
            let (a, b) = t.link_endpoints(id);
            let (Endpoint::Node(a), Endpoint::Node(b)) = (a, b) else {
                panic!("mesh link {id} touches the host");
            };
            assert_eq!(t.distance(a, b), 1);
        }
        for node in 0..t.len() {
            assert_eq!(
                t.link_endpoints(t.host_to_node_link(node)),
                (Endpoint::Host, Endpoint::Node(node))
            );
            assert_eq!(
                t.link_endpoints(t.node_to_host_link(node)),
                (Endpoint::Node(node), Endpoint::Host)
            );
        }
        // Ids increase with the source node.
        let sources: Vec<usize> = (0..t.mesh_link_count())
            .map(|id| match t.link_endpoints(id).0 {
                Endpoint::Node(n) => n,
                Endpoint::Host => unreachable!(),
            })
            .collect();
        assert!(sources.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn torus_step_prefers_positive_on_ties() {
        let t = topo("4", true);
        assert_eq!(t.step(0, 0, 2), (1, 2));
        assert_eq!(t.step(0, 2, 0), (1, 2));
        assert_eq!(t.step(0, 0, 3), (0, 1));
        assert_eq!(t.step(0, 3, 0), (1, 1));
        assert_eq!(t.step(0, 1, 1), (1, 0));
    }

    #[test]
    fn hops_match_route_length() {
        let mut t = topo("3x4x2", true);
        t.set_host_link(5, LinkSpec::DEFAULT_HOST);
        let mut eps = vec![Endpoint::Host];
        eps.extend((0..t.len()).map(Endpoint::Node));
        for &a in &eps {
            for &b in &eps {
                assert_eq!(t.hops(a, b), t.route(a, b).len(), "{a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn bad_set_host_link_is_a_typed_error() {
        let mut t = topo("2x2", false);
        assert!(
            t.try_set_host_link(4, LinkSpec::DEFAULT_HOST, LinkSpec::DEFAULT_HOST)
                .is_err()
        );
        let zero = LinkSpec {
            bandwidth_bytes_per_s: 0.0,
            latency_s: 0.0,
        };
        assert!(
            t.try_set_host_link(1, zero, LinkSpec::DEFAULT_HOST)
                .is_err()
        );
        assert!(!t.has_direct_host_link(1));
        assert!(t.check_node(3).is_ok());
        assert!(t.check_node(4).is_err());
    }
}
