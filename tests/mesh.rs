//! Mesh topology: spec parsing, coordinates, dimension-order routing, host ingress, transfer
//! times computed by hand, and contention on shared links.

use accelmesh::Error;
use accelmesh::mesh::{Endpoint, LinkSchedule, LinkSpec, MeshSpec, Topology};

fn topo(dims: &str, torus: bool) -> Topology {
    Topology::new(MeshSpec::parse(dims, torus).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-9)
}

fn node(e: Endpoint) -> usize {
    match e {
        Endpoint::Node(n) => n,
        Endpoint::Host => panic!("expected a node, got the host"),
    }
}

/// Hop count computed from coordinates alone, independently of the topology's own code.
fn expected_distance(dims: &[usize], torus: bool, a: &[usize], b: &[usize]) -> usize {
    dims.iter()
        .zip(a.iter().zip(b))
        .map(|(&k, (&x, &y))| {
            let d = x.abs_diff(y);
            if torus { d.min(k - d) } else { d }
        })
        .sum()
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_good_specs_with_defaults() {
    let s = MeshSpec::parse("8x8", false).unwrap();
    assert_eq!(s.dims, vec![8, 8]);
    assert!(!s.torus);
    assert_eq!(s.link, LinkSpec::DEFAULT_MESH);
    assert_eq!(s.link.bandwidth_bytes_per_s, 25e9);
    assert_eq!(s.link.latency_s, 1e-6);
    assert_eq!(s.host_link.bandwidth_bytes_per_s, 16e9);
    assert_eq!(s.host_link.latency_s, 5e-6);
    assert_eq!(s.ingress, 0);

    let s = MeshSpec::parse("4x4x2", true).unwrap();
    assert_eq!(s.dims, vec![4, 4, 2]);
    assert!(s.torus);
    assert_eq!(s.to_string(), "4x4x2 torus");

    assert_eq!(MeshSpec::parse("16", false).unwrap().dims, vec![16]);
    assert_eq!(MeshSpec::parse(" 2X3 ", false).unwrap().dims, vec![2, 3]);
    assert_eq!(
        MeshSpec::parse("1x1x1x1", false).unwrap().dims,
        vec![1, 1, 1, 1]
    );
    assert_eq!(MeshSpec::parse("64x64", false).unwrap().dims, vec![64, 64]);
    assert_eq!(MeshSpec::parse("4096", true).unwrap().dims, vec![4096]);
}

#[test]
fn refuses_bad_specs_naming_the_text() {
    let bad = [
        "",
        "   ",
        "x",
        "4x",
        "x4",
        "0",
        "0x4",
        "4x0x2",
        "a",
        "4xb",
        "-1",
        "4.5",
        "4x4 x2y",
        "1x1x1x1x1",
        "2x2x2x2x2",
        "65x64",
        "4097",
        "99999999999999999999999",
        "4096x4096x4096x4096",
    ];
    for text in bad {
        match MeshSpec::parse(text, false) {
            Err(e @ Error::Parse { .. }) => {
                let Error::Parse { ref value, .. } = e else {
                    unreachable!()
                };
                assert_eq!(value, text);
                assert!(e.to_string().contains(&format!("`{text}`")), "{e}");
            }
            other => panic!("`{text}` should be refused, got {other:?}"),
        }
    }
    let e = MeshSpec::parse("4x0", false).unwrap_err().to_string();
    assert!(e.contains("dimension 2 is 0"), "{e}");
    let e = MeshSpec::parse("1x1x1x1x1", false).unwrap_err().to_string();
    assert!(e.contains("more than 4 dimensions"), "{e}");
    let e = MeshSpec::parse("65x64", false).unwrap_err().to_string();
    assert!(e.contains("4160 nodes"), "{e}");
}

#[test]
fn topology_refuses_bad_hand_built_specs() {
    let mut s = MeshSpec::parse("4x4", false).unwrap();
    s.ingress = 16;
    assert!(
        Topology::new(s.clone())
            .unwrap_err()
            .to_string()
            .contains("16")
    );
    s.ingress = 15;
    assert!(Topology::new(s.clone()).is_ok());

    for (bw, lat) in [
        (0.0, 1e-6),
        (-1.0, 1e-6),
        (f64::NAN, 1e-6),
        (1e9, -1.0),
        (1e9, f64::NAN),
    ] {
        let mut t = s.clone();
        t.link = LinkSpec {
            bandwidth_bytes_per_s: bw,
            latency_s: lat,
        };
        assert!(Topology::new(t).is_err(), "link {bw} B/s {lat} s");
        let mut t = s.clone();
        t.host_link = LinkSpec {
            bandwidth_bytes_per_s: bw,
            latency_s: lat,
        };
        assert!(Topology::new(t).is_err(), "host link {bw} B/s {lat} s");
        assert!(LinkSpec::new(bw, lat).is_err());
    }

    for dims in [vec![], vec![0], vec![2, 0], vec![1, 1, 1, 1, 1], vec![4097]] {
        let mut t = s.clone();
        t.dims = dims.clone();
        t.ingress = 0;
        assert!(Topology::new(t).is_err(), "dims {dims:?}");
    }
    assert!(Topology::new(MeshSpec::line(0)).is_err());
}

#[test]
fn line_is_a_one_dimensional_mesh() {
    let t = Topology::new(MeshSpec::line(5)).unwrap();
    assert_eq!(t.len(), 5);
    assert!(!t.is_empty());
    assert_eq!(t.spec().dims, vec![5]);
    assert!(!t.spec().torus);
    assert_eq!(t.distance(0, 4), 4);
    // 4 neighbour pairs, one link each way, plus 2 host links per node.
    assert_eq!(t.link_count(), 8 + 10);
}

// ---------------------------------------------------------------- coordinates

#[test]
fn coordinates_round_trip_x_first() {
    for (dims, torus) in [
        ("4x4", false),
        ("3x4x2", true),
        ("2x3x2x2", false),
        ("7", true),
    ] {
        let t = topo(dims, torus);
        let sizes = t.spec().dims.clone();
        assert_eq!(t.len(), sizes.iter().product::<usize>());
        for n in 0..t.len() {
            let c = t.coord(n).to_vec();
            assert_eq!(c.len(), sizes.len());
            assert!(c.iter().zip(&sizes).all(|(&x, &k)| x < k));
            assert_eq!(t.node_at(&c), Some(n), "{dims} node {n} at {c:?}");
        }
        assert_eq!(t.node_at(&vec![0; sizes.len() + 1]), None);
        let mut outside = vec![0; sizes.len()];
        outside[0] = sizes[0];
        assert_eq!(t.node_at(&outside), None);
    }
    let t = topo("4x4", false);
    assert_eq!(t.coord(1), &[1, 0]);
    assert_eq!(t.coord(4), &[0, 1]);
    assert_eq!(t.coord(13), &[1, 3]);
    let t = topo("4x4x2", false);
    assert_eq!(t.coord(16 + 4 + 3), &[3, 1, 1]);
}

// ---------------------------------------------------------------- routing

/// Checks every node-to-node route of `t`: contiguous neighbour links from `a` to `b`, each
/// changing one coordinate by one step, dimensions in increasing order, and length equal to
/// the (torus) Manhattan distance.
fn check_all_routes(t: &Topology) {
    let dims = t.spec().dims.clone();
    let torus = t.spec().torus;
    let mut buf = Vec::new();
    for a in 0..t.len() {
        for b in 0..t.len() {
            let route = t.route(Endpoint::Node(a), Endpoint::Node(b));
            let want = expected_distance(&dims, torus, t.coord(a), t.coord(b));
            assert_eq!(route.len(), want, "{a} -> {b}");
            assert_eq!(t.distance(a, b), want);
            assert_eq!(t.hops(Endpoint::Node(a), Endpoint::Node(b)), want);
            buf.clear();
            t.route_into(Endpoint::Node(a), Endpoint::Node(b), &mut buf);
            assert_eq!(buf, route);

            let mut cur = a;
            let mut last_dim = 0;
            for &id in &route {
                assert!(id < t.mesh_link_count());
                let (src, dst) = t.link_endpoints(id);
                assert_eq!(node(src), cur, "{a} -> {b}: route is not contiguous");
                let next = node(dst);
                let (cc, cn) = (t.coord(cur), t.coord(next));
                let changed: Vec<usize> = (0..dims.len()).filter(|&d| cc[d] != cn[d]).collect();
                assert_eq!(
                    changed.len(),
                    1,
                    "{a} -> {b}: link {id} is not a neighbour link"
                );
                let d = changed[0];
                let step = cc[d].abs_diff(cn[d]);
                assert!(step == 1 || (torus && step == dims[d] - 1), "{a} -> {b}");
                assert!(d >= last_dim, "{a} -> {b}: not dimension-ordered");
                last_dim = d;
                cur = next;
            }
            assert_eq!(cur, b);
        }
    }
}

#[test]
fn mesh_routes_are_dimension_ordered_and_minimal() {
    check_all_routes(&topo("4x3x2", false));
    check_all_routes(&topo("8x8", false));
    check_all_routes(&topo("2x2x2x2", false));
    check_all_routes(&topo("9", false));
}

#[test]
fn torus_routes_wrap_around_the_short_way() {
    check_all_routes(&topo("5x4", true));
    check_all_routes(&topo("4x4x2", true));
    check_all_routes(&topo("3x3x3", true));
    check_all_routes(&topo("8", true));

    let t = topo("4x4", true);
    // [0,0] -> [3,0]: one hop through the wraparound, not three.
    let r = t.route(Endpoint::Node(0), Endpoint::Node(3));
    assert_eq!(r.len(), 1);
    assert_eq!(
        t.link_endpoints(r[0]),
        (Endpoint::Node(0), Endpoint::Node(3))
    );
    // A mesh goes the long way.
    assert_eq!(
        topo("4x4", false).hops(Endpoint::Node(0), Endpoint::Node(3)),
        3
    );
}

#[test]
fn torus_ties_go_the_positive_way() {
    let t = topo("4", true);
    let path = |a: usize, b: usize| -> Vec<usize> {
        let mut nodes = vec![a];
        for id in t.route(Endpoint::Node(a), Endpoint::Node(b)) {
            nodes.push(node(t.link_endpoints(id).1));
        }
        nodes
    };
    assert_eq!(path(0, 2), vec![0, 1, 2]);
    assert_eq!(path(2, 0), vec![2, 3, 0]);
    assert_eq!(path(3, 1), vec![3, 0, 1]);
    assert_eq!(path(0, 3), vec![0, 3]);
}

#[test]
fn routes_go_x_first_then_y() {
    let t = topo("4x4", false);
    // [0,0] -> [2,3]: x to 2 first, then y to 3.
    let mut nodes = vec![0];
    for id in t.route(
        Endpoint::Node(0),
        Endpoint::Node(t.node_at(&[2, 3]).unwrap()),
    ) {
        nodes.push(node(t.link_endpoints(id).1));
    }
    let coords: Vec<Vec<usize>> = nodes.iter().map(|&n| t.coord(n).to_vec()).collect();
    assert_eq!(
        coords,
        vec![
            vec![0, 0],
            vec![1, 0],
            vec![2, 0],
            vec![2, 1],
            vec![2, 2],
            vec![2, 3]
        ]
    );
}

#[test]
fn same_endpoint_routes_are_empty() {
    let t = topo("3x3", true);
    assert!(t.route(Endpoint::Host, Endpoint::Host).is_empty());
    assert!(t.route(Endpoint::Node(4), Endpoint::Node(4)).is_empty());
    assert_eq!(t.hops(Endpoint::Host, Endpoint::Host), 0);
    assert_eq!(
        t.transfer_time(Endpoint::Node(4), Endpoint::Node(4), 1 << 30),
        0.0
    );
    assert_eq!(
        t.transfer_time(Endpoint::Host, Endpoint::Host, 1 << 30),
        0.0
    );
}

// ---------------------------------------------------------------- host links

#[test]
fn host_routes_enter_and_leave_through_the_ingress() {
    let mut spec = MeshSpec::parse("4x4", false).unwrap();
    spec.ingress = 5;
    let t = Topology::new(spec).unwrap();
    assert_eq!(t.ingress(), 5);
    for j in 0..t.len() {
        let down = t.route(Endpoint::Host, Endpoint::Node(j));
        assert_eq!(down[0], t.host_to_node_link(5));
        assert_eq!(down[1..], t.route(Endpoint::Node(5), Endpoint::Node(j))[..]);
        assert_eq!(
            t.hops(Endpoint::Host, Endpoint::Node(j)),
            1 + t.distance(5, j)
        );

        let up = t.route(Endpoint::Node(j), Endpoint::Host);
        assert_eq!(*up.last().unwrap(), t.node_to_host_link(5));
        assert_eq!(
            up[..up.len() - 1],
            t.route(Endpoint::Node(j), Endpoint::Node(5))[..]
        );
        assert_eq!(
            t.hops(Endpoint::Node(j), Endpoint::Host),
            1 + t.distance(j, 5)
        );
    }
    assert_eq!(
        t.link_endpoints(t.host_to_node_link(5)),
        (Endpoint::Host, Endpoint::Node(5))
    );
    assert_eq!(
        t.link_endpoints(t.node_to_host_link(5)),
        (Endpoint::Node(5), Endpoint::Host)
    );
}

#[test]
fn a_measured_host_link_replaces_the_ingress_route() {
    let mut t = topo("4x4", false);
    let pcie = LinkSpec::new(12e9, 8e-6).unwrap();
    t.set_host_link(10, pcie);
    assert!(t.has_direct_host_link(10));
    assert!(!t.has_direct_host_link(9));

    let down = t.route(Endpoint::Host, Endpoint::Node(10));
    assert_eq!(down, vec![t.host_to_node_link(10)]);
    assert_eq!(t.link(down[0]), pcie);
    let up = t.route(Endpoint::Node(10), Endpoint::Host);
    assert_eq!(up, vec![t.node_to_host_link(10)]);
    assert_eq!(t.link(up[0]), pcie);
    assert_eq!(t.hops(Endpoint::Host, Endpoint::Node(10)), 1);
    assert!(close(
        t.transfer_time(Endpoint::Host, Endpoint::Node(10), 12_000_000),
        8e-6 + 1e-3
    ));

    // Other nodes still go through the ingress (node 0) and its default host link.
    let down = t.route(Endpoint::Host, Endpoint::Node(9));
    assert_eq!(down[0], t.host_to_node_link(0));
    assert_eq!(down.len(), 1 + t.distance(0, 9));
    assert_eq!(t.link(down[0]), LinkSpec::DEFAULT_HOST);

    // Directions can differ.
    t.try_set_host_link(
        3,
        LinkSpec::new(20e9, 1e-6).unwrap(),
        LinkSpec::new(10e9, 2e-6).unwrap(),
    )
    .unwrap();
    assert!(close(
        t.transfer_time(Endpoint::Host, Endpoint::Node(3), 20_000),
        1e-6 + 1e-6
    ));
    assert!(close(
        t.transfer_time(Endpoint::Node(3), Endpoint::Host, 20_000),
        2e-6 + 2e-6
    ));
    assert!(t.try_set_host_link(16, pcie, pcie).is_err());
}

#[test]
fn a_measured_ingress_link_is_used_by_every_ingress_route() {
    let mut t = topo("2x2", false);
    let slow = LinkSpec::new(1e9, 0.0).unwrap();
    t.set_host_link(0, slow);
    let route = t.route(Endpoint::Host, Endpoint::Node(3));
    assert_eq!(route[0], t.host_to_node_link(0));
    assert_eq!(t.link(route[0]), slow);
}

// ---------------------------------------------------------------- transfer times

fn line3() -> Topology {
    let mut spec = MeshSpec::line(3);
    spec.link = LinkSpec::new(10e9, 1e-6).unwrap();
    spec.host_link = LinkSpec::new(5e9, 2e-6).unwrap();
    Topology::new(spec).unwrap()
}

#[test]
fn link_time_is_latency_plus_bytes_over_bandwidth() {
    let l = LinkSpec::new(10e9, 1e-6).unwrap();
    assert!(close(l.time(1_000_000), 1e-6 + 1e-4));
    assert_eq!(l.time(0), 1e-6);
}

#[test]
fn transfer_times_by_hand() {
    let t = line3();
    // Two mesh hops: 2 x 1 µs + 1 MB / 10 GB/s.
    assert!(close(
        t.transfer_time(Endpoint::Node(0), Endpoint::Node(2), 1_000_000),
        2e-6 + 1e-4
    ));
    // Host -> node 2: host link (2 µs, 5 GB/s) + two mesh hops; the host link is the slowest.
    assert!(close(
        t.transfer_time(Endpoint::Host, Endpoint::Node(2), 1_000_000),
        4e-6 + 2e-4
    ));
    assert!(close(
        t.transfer_time(Endpoint::Node(1), Endpoint::Host, 1_000_000),
        3e-6 + 2e-4
    ));
    assert!(close(
        t.transfer_time(Endpoint::Host, Endpoint::Node(0), 0),
        2e-6
    ));

    // Default 8x8: corner to corner is 14 hops at 1 µs and 25 GB/s.
    let t = topo("8x8", false);
    assert!(close(
        t.transfer_time(Endpoint::Node(0), Endpoint::Node(63), 25_000_000),
        14e-6 + 1e-3
    ));
    // Same on a torus is 2 hops.
    let t = topo("8x8", true);
    assert!(close(
        t.transfer_time(Endpoint::Node(0), Endpoint::Node(63), 25_000_000),
        2e-6 + 1e-3
    ));
}

// ---------------------------------------------------------------- contention

#[test]
fn transfers_sharing_a_link_serialize() {
    let t = topo("4", false);
    let bytes = 25_000_000; // 1 ms on a 25 GB/s link
    let alone = {
        let mut s = LinkSchedule::new(&t);
        s.reserve(&t, Endpoint::Node(1), Endpoint::Node(2), bytes, 0.0)
    };
    assert_eq!(alone.0, 0.0);
    assert!(close(alone.1, 1e-6 + 1e-3));

    let mut s = LinkSchedule::new(&t);
    let first = s.reserve(&t, Endpoint::Node(0), Endpoint::Node(3), bytes, 0.0);
    assert_eq!(first.0, 0.0);
    assert!(close(first.1, 3e-6 + 1e-3));
    let shared = t.neighbour_link(1, 0, true).unwrap();
    assert!(close(s.busy_until(shared), 1e-3));

    // 1 -> 2 shares link 1->2 with the first transfer: it waits until that link is free.
    let est = s.estimate(&t, Endpoint::Node(1), Endpoint::Node(2), bytes, 0.0);
    let second = s.reserve(&t, Endpoint::Node(1), Endpoint::Node(2), bytes, 0.0);
    assert_eq!(est, second.1);
    assert!(close(second.0, 1e-3));
    assert!(close(second.1, 1e-3 + 1e-6 + 1e-3));
    assert!(second.1 > alone.1);
    assert!(close(s.busy_until(shared), 2e-3));

    // A transfer ready after the link is free is not delayed.
    let late = s.reserve(&t, Endpoint::Node(1), Endpoint::Node(2), bytes, 5e-3);
    assert_eq!(late.0, 5e-3);
    assert!(close(late.1, 5e-3 + 1e-6 + 1e-3));

    assert_eq!(s.bytes_moved(), 3 * bytes);
    assert_eq!(s.transfers(), 3);
    assert_eq!(s.link_bytes(shared), 3 * bytes);
}

#[test]
fn disjoint_and_opposite_routes_do_not_interfere() {
    let t = topo("4", false);
    let bytes = 25_000_000;
    let mut s = LinkSchedule::new(&t);
    let a = s.reserve(&t, Endpoint::Node(0), Endpoint::Node(1), bytes, 0.0);
    let b = s.reserve(&t, Endpoint::Node(2), Endpoint::Node(3), bytes, 0.0);
    // Opposite direction over the same wires: links are directed (full duplex).
    let c = s.reserve(&t, Endpoint::Node(1), Endpoint::Node(0), bytes, 0.0);
    let d = s.reserve(&t, Endpoint::Node(3), Endpoint::Node(0), bytes, 0.0);
    for (start, finish) in [a, b, c] {
        assert_eq!(start, 0.0);
        assert!(close(finish, 1e-6 + 1e-3));
    }
    // 3 -> 0 uses 3->2, 2->1, 1->0; 1->0 is held by `c`.
    assert!(close(d.0, 1e-3));

    // Different routes on a 2-D mesh: row 0 and row 1 moves never meet.
    let t = topo("4x4", false);
    let mut s = LinkSchedule::new(&t);
    let r0 = s.reserve(&t, Endpoint::Node(0), Endpoint::Node(3), bytes, 0.0);
    let r1 = s.reserve(&t, Endpoint::Node(4), Endpoint::Node(7), bytes, 0.0);
    assert_eq!(r0, r1);
    assert_eq!(r1.0, 0.0);
}

#[test]
fn host_transfers_contend_at_the_ingress_unless_nodes_have_their_own_link() {
    let bytes = 16_000_000; // 1 ms on a 16 GB/s host link
    let t = topo("2x2", false);
    let mut s = LinkSchedule::new(&t);
    let a = s.reserve(&t, Endpoint::Host, Endpoint::Node(1), bytes, 0.0);
    let b = s.reserve(&t, Endpoint::Host, Endpoint::Node(2), bytes, 0.0);
    assert_eq!(a.0, 0.0);
    assert!(close(b.0, 1e-3));
    assert!(b.1 > a.1);

    let mut t = topo("2x2", false);
    t.set_host_link(1, LinkSpec::DEFAULT_HOST);
    t.set_host_link(2, LinkSpec::DEFAULT_HOST);
    let mut s = LinkSchedule::new(&t);
    let a = s.reserve(&t, Endpoint::Host, Endpoint::Node(1), bytes, 0.0);
    let b = s.reserve(&t, Endpoint::Host, Endpoint::Node(2), bytes, 0.0);
    assert_eq!(a, b);
    assert!(close(a.1, 5e-6 + 1e-3));
}

#[test]
fn estimate_does_not_reserve_and_reset_frees_everything() {
    let t = topo("3x3", true);
    let mut s = LinkSchedule::new(&t);
    let e1 = s.estimate(&t, Endpoint::Host, Endpoint::Node(8), 1 << 20, 0.0);
    let e2 = s.estimate(&t, Endpoint::Host, Endpoint::Node(8), 1 << 20, 0.0);
    assert_eq!(e1, e2);
    assert!(close(
        e1,
        t.transfer_time(Endpoint::Host, Endpoint::Node(8), 1 << 20)
    ));
    assert_eq!(s.bytes_moved(), 0);
    assert!((0..t.link_count()).all(|l| s.busy_until(l) == 0.0));

    let r = s.reserve(&t, Endpoint::Host, Endpoint::Node(8), 1 << 20, 0.0);
    assert_eq!(r.1, e1);
    assert!(s.estimate(&t, Endpoint::Host, Endpoint::Node(8), 1 << 20, 0.0) > e1);
    s.reset();
    assert_eq!(s.bytes_moved(), 0);
    assert_eq!(s.transfers(), 0);
    assert!((0..t.link_count()).all(|l| s.busy_until(l) == 0.0));
    assert_eq!(
        s.estimate(&t, Endpoint::Host, Endpoint::Node(8), 1 << 20, 0.0),
        e1
    );
    // Same endpoints: nothing moves, nothing waits.
    assert_eq!(
        s.reserve(&t, Endpoint::Node(4), Endpoint::Node(4), 1 << 20, 2.5),
        (2.5, 2.5)
    );
    assert_eq!(s.bytes_moved(), 0);
}

// ---------------------------------------------------------------- nearest_first

#[test]
fn nearest_first_sorts_by_hops_then_index() {
    let t = topo("4x4", false);
    // From [1,1]: 1, 4, 6, 9 are one hop away, 0 and 10 two, 15 four.
    assert_eq!(
        t.nearest_first(5, &[0, 15, 6, 9, 4, 1, 10, 5]),
        vec![5, 1, 4, 6, 9, 0, 10, 15]
    );
    assert!(t.nearest_first(5, &[]).is_empty());

    let t = topo("4x4", true);
    // From [0,0] on a torus: 3 = [3,0] and 12 = [0,3] are one hop, 2 and 5 two.
    assert_eq!(t.nearest_first(0, &[5, 2, 12, 3]), vec![3, 12, 2, 5]);
}
