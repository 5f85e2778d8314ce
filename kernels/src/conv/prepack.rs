//! Convolution weights packed once into panels (the gemm's A panels, or the flat path's
//! output-channel panels), and reused by every call.
//!
//! A caller that keeps constant weights alive and unchanged (an ONNX session's initializers)
//! pins them with [`WeightPin::new`]. While a pin lives, [`super::conv2d`] looks the weights
//! up by address and, on the first call for an instruction set, packs them per group into the
//! panels its gemm would pack on every call; later calls only read those panels. The panels
//! hold the same values in the same order, so results are bit-identical with or without a pin.
//! Unpinned weights are packed per call as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::params::Geometry;
#[cfg(target_arch = "x86_64")]
use super::{winograd, winograd_phases};
use crate::Isa;
use crate::gemm::{Blocking, CacheSizes, MatRef, PackA, PrepackedA, micro_kernel};

/// Weights of one convolution packed for one instruction set.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    isa: Isa,
    weight_dims: [usize; 4],
    groups: usize,
    mr: usize,
    kc: usize,
    /// Row panels per group.
    panels: usize,
    /// Packed values of each group, one after the other (`panels·mr·depth` each), from
    /// `data[start]`, which lies on a cache line.
    data: Vec<f32>,
    /// Where the packed values start in `data`.
    start: usize,
    /// For Winograd-transformed weights ([`PackedWeights::winograd`]), the OIHW dims of the
    /// weights they were transformed from and the positions of the transform.
    winograd_of: Option<([usize; 4], usize)>,
}

/// Floats in a cache line: packed data starts on one, so that panels of 16 rows read one
/// line per depth index.
const LINE: usize = 16;

impl PackedWeights {
    /// The depth block of the gemm of `g` on `isa`: the one its panels are packed with.
    pub fn gemm_depth_block(isa: Isa, g: &Geometry) -> usize {
        let kernel = micro_kernel(isa);
        Blocking::for_kernel(kernel.mr, kernel.nr, CacheSizes::detect())
            .for_depth(g.depth())
            .kc
    }

    /// Rows per panel of `isa`'s gemm.
    pub fn gemm_rows(isa: Isa) -> usize {
        micro_kernel(isa).mr
    }

    /// Packs the `O × (C/g·KH·KW)` weight matrix of each group of `g` into panels of `mr`
    /// rows (at least 1), in depth blocks of `kc` (at least 1), as `isa`'s gemm packs A.
    pub fn pack(
        isa: Isa,
        g: &Geometry,
        weight: &[f32],
        kc: usize,
        mr: usize,
    ) -> Option<PackedWeights> {
        let depth = g.depth();
        let (mr, kc) = (mr.max(1), kc.max(1));
        let panels = g.og.div_ceil(mr);
        let group_len = panels.checked_mul(mr)?.checked_mul(depth)?;
        let len = group_len.checked_mul(g.groups)?;
        let mut data = vec![0.0f32; len.checked_add(LINE)?];
        let start = data.as_ptr().align_offset(LINE * 4).min(LINE);
        for (group, dst) in data[start..start + len]
            .chunks_exact_mut(group_len.max(1))
            .enumerate()
            .take(g.groups)
        {
            let rows = &weight[group * g.og * depth..][..g.og * depth];
            let a = MatRef::row_major(rows, g.og, depth).ok()?;
            for (block, dst) in dst.chunks_mut(kc * panels * mr).enumerate() {
                let k0 = block * kc;
                a.pack_a(0, g.og, k0, kc.min(depth - k0), mr, dst);
            }
        }
        Some(PackedWeights {
            isa,
            weight_dims: [g.o, g.cg, g.kh, g.kw],
            groups: g.groups,
            mr,
            kc,
            panels,
            data,
            start,
            winograd_of: None,
        })
    }

    #[cfg(target_arch = "x86_64")]
    /// The Winograd-transformed weights of `g` (3×3, one group), packed as the gemm packs the
    /// A of [`winograd::transformed_geometry`]: one `O × C` matrix per transform position.
    pub fn winograd(
        isa: Isa,
        g: &Geometry,
        weight: &[f32],
        tile: winograd::Tile,
    ) -> Option<PackedWeights> {
        let transformed = winograd::transformed_geometry(g, tile);
        let rows = winograd::transform_weights(weight, g.o, g.c, tile);
        let kc = Self::gemm_depth_block(isa, &transformed);
        Self::pack_transformed(isa, g, &transformed, &rows, kc, Self::gemm_rows(isa))
    }

    #[cfg(target_arch = "x86_64")]
    /// The stride-phase Winograd weights of `g` (7×7 or 8×8 at stride 2, one group): the
    /// matrices of [`winograd_phases::transformed_geometry`] in panels of
    /// [`winograd_phases::GROUP`] channels and one depth block.
    pub fn winograd_phases(isa: Isa, g: &Geometry, weight: &[f32]) -> Option<PackedWeights> {
        let transformed = winograd_phases::transformed_geometry(g);
        let rows = winograd_phases::transform_weights(weight, g);
        let depth = transformed.cg;
        Self::pack_transformed(isa, g, &transformed, &rows, depth, winograd_phases::GROUP)
    }

    #[cfg(target_arch = "x86_64")]
    /// `rows`, one matrix per transform position as `transformed` lays them out, packed in
    /// depth blocks of `kc` and panels of `mr` rows, and marked as the transform of `g`'s
    /// weights ([`transform_key`]).
    fn pack_transformed(
        isa: Isa,
        g: &Geometry,
        transformed: &Geometry,
        rows: &[f32],
        kc: usize,
        mr: usize,
    ) -> Option<PackedWeights> {
        let pack = Self::pack(isa, transformed, rows, kc, mr)?;
        Some(PackedWeights {
            winograd_of: transform_key(g, transformed.groups),
            ..pack
        })
    }

    /// Whether these are the panels of `g` on `isa` in depth blocks of `kc`, `mr` rows each.
    fn fits(&self, isa: Isa, g: &Geometry, kc: usize, mr: usize) -> bool {
        self.winograd_of.is_none()
            && self.isa == isa
            && self.weight_dims == [g.o, g.cg, g.kh, g.kw]
            && self.groups == g.groups
            && self.kc == kc.max(1)
            && self.mr == mr.max(1)
    }

    /// The panels of group `group` from output channel `first_row` of it, if that channel
    /// starts a panel.
    pub fn view(&self, group: usize, first_row: usize) -> Option<PrepackedA<'_>> {
        if !first_row.is_multiple_of(self.mr) || group >= self.groups {
            return None;
        }
        let group_len = self.group_len();
        Some(PrepackedA {
            data: &self.data[self.start + group * group_len..][..group_len],
            mr: self.mr,
            kc: self.kc,
            panels: self.panels,
            first_panel: first_row / self.mr,
            then: &[],
        })
    }

    /// Every group's packed values, one after the other, and the values per group.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn groups_values(&self) -> (&[f32], usize) {
        let group_len = self.group_len();
        (
            &self.data[self.start..][..group_len * self.groups],
            group_len,
        )
    }

    /// Depth of a group's weight matrix (`C/g·KH·KW` of the dims packed).
    fn depth(&self) -> usize {
        self.weight_dims[1] * self.weight_dims[2] * self.weight_dims[3]
    }

    /// Packed values per group.
    fn group_len(&self) -> usize {
        self.panels * self.mr * self.depth()
    }

    /// Rows per panel.
    pub fn mr(&self) -> usize {
        self.mr
    }

    /// Depth of a packed block (the last block of a group may be shorter).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn kc(&self) -> usize {
        self.kc
    }

    /// Row panels per group.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn panels(&self) -> usize {
        self.panels
    }

    /// Panels `first..first + count` of depth block `block` of group `group`, one after the
    /// other: each holds `mr` values per depth index of the block, for its `kc` (or fewer, in
    /// the last block) depth indices.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn panel_run(&self, group: usize, block: usize, first: usize, count: usize) -> &[f32] {
        let k0 = block * self.kc;
        let kcb = self.kc.min(self.depth() - k0);
        let start = group * self.group_len() + k0 * self.panels * self.mr + first * self.mr * kcb;
        &self.data[self.start + start..][..count * self.mr * kcb]
    }
}

/// The pinned weights by address and length.
type Registry = HashMap<(usize, usize), Pinned>;

/// One pinned buffer: its pin count, the packs made so far, and the parts of it pinned with
/// [`pin_part`] (unpinned with it).
#[derive(Default)]
struct Pinned {
    pins: usize,
    packs: Arc<Mutex<Vec<Arc<PackedWeights>>>>,
    parts: Vec<(usize, usize)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Declares a weight buffer constant while the pin lives, so that convolutions with it pack
/// it once per instruction set and reuse the packed panels (see the module documentation).
///
/// The holder promises that the buffer is neither changed nor freed before the pin is
/// dropped; otherwise later convolutions with a buffer at the same address would use stale
/// panels. Pins of one buffer may be taken more than once; the panels go with the last one.
#[derive(Debug)]
pub struct WeightPin {
    key: Option<(usize, usize)>,
}

impl WeightPin {
    /// Pins `weight` (f32 values in OIHW order). An empty buffer is not pinned.
    pub fn new(weight: &[f32]) -> WeightPin {
        if weight.is_empty() {
            return WeightPin { key: None };
        }
        let key = (weight.as_ptr() as usize, weight.len());
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().pins += 1;
        WeightPin { key: Some(key) }
    }
}

impl Drop for WeightPin {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&key) {
            entry.pins -= 1;
            if entry.pins == 0
                && let Some(gone) = map.remove(&key)
            {
                for part in gone.parts {
                    if map.get(&part).is_some_and(|p| p.pins == 0) {
                        map.remove(&part);
                    }
                }
            }
        }
    }
}

/// Most parts pinned per buffer: a few splits' worth (a split of shares that keep changing
/// would otherwise keep a packed copy of every cut it ever made).
const MAX_PARTS: usize = 16;

/// Pins `part`, a run of the pinned buffer `whole` (the weights of some of a convolution's
/// output channels), for as long as `whole` stays pinned, so that a convolution split by
/// output channels packs each part's weights once too. Returns whether `part` is pinned now
/// (false when `whole` is not pinned by a [`WeightPin`], `part` does not lie within it, or
/// `whole` has as many parts pinned as it may keep).
pub fn pin_part(whole: &[f32], part: &[f32]) -> bool {
    let (w0, p0) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    let inside = p0 >= w0 && p0 + std::mem::size_of_val(part) <= w0 + std::mem::size_of_val(whole);
    if part.is_empty() || !inside {
        return false;
    }
    let (wkey, pkey) = ((w0, whole.len()), (p0, part.len()));
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    // Only a buffer pinned by its holder (not a part itself, which would outlive a part of
    // it), and a bounded number of parts per buffer: each keeps a packed copy.
    match map.get(&wkey) {
        Some(w) if w.pins > 0 => {
            if pkey == wkey || map.contains_key(&pkey) {
                return true;
            }
            if w.parts.len() >= MAX_PARTS {
                return false;
            }
        }
        _ => return false,
    }
    map.insert(pkey, Pinned::default());
    if let Some(w) = map.get_mut(&wkey) {
        w.parts.push(pkey);
    }
    true
}

/// The packed panels of `weight` for convolution `g` on `isa` in depth blocks of `kc`, `mr`
/// rows each, packing them now if the buffer is pinned and they are not packed yet; `None`
/// for a buffer that is not pinned.
pub(crate) fn packed(
    isa: Isa,
    g: &Geometry,
    weight: &[f32],
    kc: usize,
    mr: usize,
) -> Option<Arc<PackedWeights>> {
    cached(
        weight,
        |p| p.fits(isa, g, kc, mr),
        || PackedWeights::pack(isa, g, weight, kc, mr),
    )
}

#[cfg(target_arch = "x86_64")]
/// [`PackedWeights::winograd`] of a pinned `weight`, made on the first call; `None` for a
/// buffer that is not pinned.
pub(crate) fn packed_winograd(
    isa: Isa,
    g: &Geometry,
    weight: &[f32],
    tile: winograd::Tile,
) -> Option<Arc<PackedWeights>> {
    cached_transform(isa, g, weight, tile.positions(), || {
        PackedWeights::winograd(isa, g, weight, tile)
    })
}

#[cfg(target_arch = "x86_64")]
/// [`PackedWeights::winograd_phases`] of a pinned `weight`, made on the first call; `None`
/// for a buffer that is not pinned.
pub(crate) fn packed_winograd_phases(
    isa: Isa,
    g: &Geometry,
    weight: &[f32],
) -> Option<Arc<PackedWeights>> {
    let positions = winograd_phases::transformed_geometry(g).groups;
    cached_transform(isa, g, weight, positions, || {
        PackedWeights::winograd_phases(isa, g, weight)
    })
}

#[cfg(target_arch = "x86_64")]
/// What marks weights transformed for a Winograd path: the OIHW dims of `g`'s weights and
/// the transform's positions.
fn transform_key(g: &Geometry, positions: usize) -> Option<([usize; 4], usize)> {
    Some(([g.o, g.cg, g.kh, g.kw], positions))
}

#[cfg(target_arch = "x86_64")]
/// The transform of pinned `weight` for `g` on `isa` with `positions` positions, made with
/// `make` on the first call; `None` for a buffer that is not pinned.
fn cached_transform(
    isa: Isa,
    g: &Geometry,
    weight: &[f32],
    positions: usize,
    make: impl FnOnce() -> Option<PackedWeights>,
) -> Option<Arc<PackedWeights>> {
    let of = transform_key(g, positions);
    cached(weight, |p| p.winograd_of == of && p.isa == isa, make)
}

/// The pack of pinned `weight` that `matches`, made with `make` if there is none yet; `None`
/// for a buffer that is not pinned.
fn cached(
    weight: &[f32],
    matches: impl Fn(&PackedWeights) -> bool,
    make: impl FnOnce() -> Option<PackedWeights>,
) -> Option<Arc<PackedWeights>> {
    let key = (weight.as_ptr() as usize, weight.len());
    let slot = {
        let map = registry().lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&map.get(&key)?.packs)
    };
    let mut packs = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = packs.iter().find(|p| matches(p)) {
        return Some(Arc::clone(found));
    }
    let pack = Arc::new(make()?);
    packs.push(Arc::clone(&pack));
    Some(pack)
}

/// Whether `weight` is pinned (for tests).
pub fn is_pinned(weight: &[f32]) -> bool {
    let key = (weight.as_ptr() as usize, weight.len());
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_pinned_while_their_whole_is() {
        let whole: Vec<f32> = (0..64).map(|i| i as f32 + 0.5).collect();
        let (part, outside) = (&whole[16..32], vec![1.0f32; 16]);
        assert!(!pin_part(&whole, part), "the whole is not pinned yet");
        let pin = WeightPin::new(&whole);
        assert!(pin_part(&whole, part));
        assert!(pin_part(&whole, part), "pinning twice is harmless");
        assert!(is_pinned(part));
        assert!(!pin_part(&whole, &outside), "not within the whole");
        assert!(!pin_part(&whole, &whole[8..8]), "empty");
        assert!(!pin_part(part, &part[0..4]), "a part of a part");
        for start in 0..MAX_PARTS + 4 {
            pin_part(&whole, &whole[start..start + 1]);
        }
        assert!(
            !is_pinned(&whole[MAX_PARTS + 2..MAX_PARTS + 3]),
            "the parts are bounded"
        );
        drop(pin);
        assert!(!is_pinned(part) && !is_pinned(&whole));
    }
}
