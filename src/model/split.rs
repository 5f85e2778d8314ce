//! A model run cut across nodes inside the graph: a device made of several host nodes that
//! splits each large convolution by output channels, and each large matrix product by output
//! columns (one row) or rows, across all of them, in shares that follow their predicted
//! speed, and runs every other op on the first (the lead).
//!
//! The parts read their inputs in place and write straight into their blocks of one output (a
//! block of output channels is one contiguous run of a single image's output, a block of
//! columns one of a single row's), side by side, the lead's on the calling thread. A member
//! that fails takes no share of later ops, and its block is re-run by the lead (or, for a
//! block it was adding into, the op fails); the run's owner reads who was dropped
//! ([`ChannelSplit::dropped`]), whose error ended an op ([`ChannelSplit::failed_member`]) and
//! who is stuck ([`ChannelSplit::stuck_member`]).

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accelmesh_kernels::conv::pin_part;

use crate::drac::partition::{self, Strategy};
use crate::node::{Device, DeviceInfo};
use crate::op::{Op, Pool2dParams};
use crate::tensor::{DType, Shape, Tensor, TensorView};
use crate::{Error, Result};

/// Least operations of a convolution or matrix product worth splitting: handing a part to a
/// member costs some tens of µs, and an op this small takes about 0.2 ms on one core.
pub const SPLIT_MIN_FLOPS: u64 = 1 << 24;

/// A member that failed during the run and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedMember {
    /// Its index among the members.
    pub member: usize,
    /// The error it gave.
    pub reason: String,
}

/// Several host nodes acting as one device for a model run (see the module docs).
pub struct ChannelSplit {
    members: Vec<Arc<dyn Device>>,
    shares: Vec<f64>,
    min_flops: u64,
    state: Mutex<SplitState>,
}

/// What the members are doing and have done.
struct SplitState {
    /// When each member was handed the part it has not finished, if any (a part queued
    /// behind a hung one counts from its hand-over).
    waiting_since: Vec<Option<Instant>>,
    /// Seconds each member spent on its parts.
    busy_s: Vec<f64>,
    /// Members that failed, in order.
    dropped: Vec<DroppedMember>,
    /// The member whose device error ended an op (the lead's error, or a member's while
    /// adding into a residual).
    failed: Option<usize>,
}

/// Shares are rounded to multiples of one part in this many, so that runs planned with
/// slightly different node speeds cut the same channels (and reuse the same packed parts).
const SHARE_STEPS: f64 = 32.0;

/// An op cut into parts that read contiguous blocks of its inputs and write contiguous
/// blocks of its output.
struct SplitOp<'a> {
    /// The whole output's shape.
    shape: Shape,
    /// The parts, in output order.
    parts: Vec<SplitPart<'a>>,
}

/// One part of a [`SplitOp`].
struct SplitPart<'a> {
    /// Its member.
    member: usize,
    /// The op it runs, on its blocks of the op's inputs.
    op: Op,
    inputs: Vec<TensorView<'a>>,
    /// Its output block: shape, and where it lies in the whole output.
    shape: Shape,
    run: Range<usize>,
}

/// One part of a split convolution: which member runs it, what, and where its output goes.
struct Piece<'a> {
    member: usize,
    op: Op,
    inputs: Vec<TensorView<'a>>,
    out: &'a mut [f32],
}

impl ChannelSplit {
    /// The members (the lead first) and their shares of each split convolution.
    pub fn new(members: Vec<Arc<dyn Device>>, shares: Vec<f64>) -> Result<ChannelSplit> {
        if members.len() < 2 || shares.len() != members.len() {
            return Err(Error::parse(
                "channel split",
                format!("{} members, {} shares", members.len(), shares.len()),
                "needs two or more members and one share each",
            ));
        }
        if shares.iter().any(|s| !(s.is_finite() && *s >= 0.0)) || shares[0] <= 0.0 {
            return Err(Error::parse(
                "channel split",
                format!("{shares:?}"),
                "shares must be finite and non-negative, the lead's positive",
            ));
        }
        let n = members.len();
        let total: f64 = shares.iter().sum();
        let shares = shares
            .iter()
            .map(|&s| match (s / total * SHARE_STEPS).round() {
                _ if s == 0.0 => 0.0,
                steps => steps.max(1.0),
            })
            .collect();
        Ok(ChannelSplit {
            members,
            shares,
            min_flops: SPLIT_MIN_FLOPS,
            state: Mutex::new(SplitState {
                waiting_since: vec![None; n],
                busy_s: vec![0.0; n],
                dropped: Vec::new(),
                failed: None,
            }),
        })
    }

    /// The same split with convolutions of at least `flops` operations split (default
    /// [`SPLIT_MIN_FLOPS`]).
    pub fn with_min_flops(mut self, flops: u64) -> ChannelSplit {
        self.min_flops = flops;
        self
    }

    /// The lead member, which runs every op that is not split.
    fn lead(&self) -> &dyn Device {
        self.members[0].as_ref()
    }

    /// Members that failed so far (their later shares went to the others).
    pub fn dropped(&self) -> Vec<DroppedMember> {
        self.state
            .lock()
            .map(|s| s.dropped.clone())
            .unwrap_or_default()
    }

    /// Seconds each member spent on its parts of split convolutions.
    pub fn busy_s(&self) -> Vec<f64> {
        self.state
            .lock()
            .map(|s| s.busy_s.clone())
            .unwrap_or_default()
    }

    /// The member that has waited longest on a part it was handed, if one has one: the one
    /// a run that never finishes waits on.
    pub fn stuck_member(&self) -> Option<usize> {
        let s = self.state.lock().ok()?;
        (0..self.members.len())
            .filter_map(|m| s.waiting_since[m].map(|t| (m, t)))
            .min_by_key(|&(m, t)| (t, m == 0))
            .map(|(m, _)| m)
    }

    /// The member whose device error ended an op of this split, if one did.
    pub fn failed_member(&self) -> Option<usize> {
        self.state.lock().ok()?.failed
    }

    /// Notes that member `m` was handed a part now (unless it waits on one already).
    fn handed(&self, m: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.waiting_since[m].get_or_insert_with(Instant::now);
        }
    }

    /// The shares of the members that have not failed; `None` when fewer than two remain
    /// or `only_cpu` leaves fewer than two (the residual forms run on CPU nodes alone).
    fn live_shares(&self, only_cpu: bool) -> Option<Vec<f64>> {
        let s = self.state.lock().ok()?;
        let shares: Vec<f64> = (0..self.members.len())
            .map(|m| {
                let failed = s.dropped.iter().any(|d| d.member == m);
                let cpu = self.members[m].info().kind == crate::node::DeviceKind::Cpu;
                if failed || (only_cpu && !cpu) {
                    0.0
                } else {
                    self.shares[m]
                }
            })
            .collect();
        (shares.iter().filter(|&&s| s > 0.0).count() >= 2).then_some(shares)
    }

    /// `op` on `inputs` (a convolution's `[x, w, bias?]` or a matrix product's `[A, B]`) cut
    /// into parts, when it is worth splitting and its parts read contiguous blocks of the
    /// inputs and write contiguous blocks of the output; `None` to run it on the lead. The
    /// parts of a pinned weight are pinned with it.
    fn plan<'a>(&self, op: &Op, inputs: &[&'a Tensor], only_cpu: bool) -> Option<SplitOp<'a>> {
        let strategies: &[Strategy] = match op {
            Op::Conv2d(_) if (2..=3).contains(&inputs.len()) => &[Strategy::OutChannels],
            // Columns for one row (a classifier at batch 1, B stored transposed), else rows.
            Op::MatMul { .. } if inputs.len() == 2 => &[Strategy::Cols, Strategy::Rows],
            _ => return None,
        };
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        if op.flops(&shapes).ok()? < self.min_flops {
            return None;
        }
        let shares = self.live_shares(only_cpu)?;
        let dtype = inputs[0].dtype();
        strategies.iter().find_map(|&strategy| {
            let parts = partition::partition(op, &shapes, dtype, strategy, &shares).ok()?;
            if parts.len() < 2 {
                return None;
            }
            let (shape, runs) = partition::output_runs(&parts)?;
            let parts = parts
                .into_iter()
                .zip(runs)
                .map(|(part, run)| {
                    let views = partition::input_views(&part, inputs).ok()??;
                    // A session's weights are pinned (packed once); so are their parts.
                    if let (Ok(whole), Ok(slice)) =
                        (inputs[1].as_slice::<f32>(), views[1].as_slice::<f32>())
                    {
                        pin_part(whole, slice);
                    }
                    Some(SplitPart {
                        member: part.share_index,
                        op: part.op,
                        inputs: views,
                        shape: part.output_shape,
                        run,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(SplitOp { shape, parts })
        })
    }

    /// Runs `split` into `out` (the whole output, row-major), adding to what it holds with
    /// `accumulate` (its residual), or reading the residual from `residual`.
    fn run_split(
        &self,
        split: SplitOp<'_>,
        residual: Option<&Tensor>,
        out: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        let mut pieces = Vec::with_capacity(split.parts.len());
        let mut rest = out;
        let mut at = 0;
        for mut part in split.parts {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(part.run.start - at);
            let (block, tail) = tail.split_at_mut(part.run.len());
            rest = tail;
            at = part.run.end;
            if let Some(r) = residual {
                part.inputs.push(r.view_run(part.shape, part.run.start)?);
            }
            pieces.push(Piece {
                member: part.member,
                op: part.op,
                inputs: part.inputs,
                out: block,
            });
        }
        self.run_pieces(pieces, accumulate)
    }

    /// Runs `pieces` side by side, each on its member's own threads (the lead's on this
    /// thread); a piece whose member fails is re-run on the lead, and the member is dropped.
    fn run_pieces(&self, pieces: Vec<Piece<'_>>, accumulate: bool) -> Result<()> {
        let (mut lead, mut others): (Vec<_>, Vec<_>) = pieces
            .into_iter()
            .map(|p| (p, None))
            .partition(|(p, _)| p.member == 0);
        self.side_by_side(&mut others, &mut lead, accumulate);
        for (mut piece, error) in lead.into_iter().chain(others) {
            let Some(e) = error else {
                continue;
            };
            // An error in the op itself, or the lead's device error, ends the run. A member's
            // device error drops the member and moves its block to the lead — unless the block
            // was being added into, which the member may have left half done: that run ends
            // too, and its owner runs it again without the member.
            if !matches!(e, Error::Device { .. }) {
                return Err(e);
            }
            if let Ok(mut s) = self.state.lock() {
                if piece.member == 0 || accumulate {
                    s.failed = Some(piece.member);
                }
                if piece.member != 0 {
                    s.dropped.push(DroppedMember {
                        member: piece.member,
                        reason: e.to_string(),
                    });
                }
            }
            if piece.member == 0 || accumulate {
                return Err(e);
            }
            piece.member = 0;
            self.run_piece(&mut piece, accumulate)?;
        }
        Ok(())
    }

    /// Runs the first of `others` beside (on its member's threads) the rest of them, and
    /// the `lead` pieces on this thread, recording each piece's error.
    fn side_by_side(
        &self,
        others: &mut [(Piece<'_>, Option<Error>)],
        lead: &mut [(Piece<'_>, Option<Error>)],
        accumulate: bool,
    ) {
        let Some(((piece, error), rest)) = others.split_first_mut() else {
            for (piece, error) in lead.iter_mut() {
                *error = self.run_piece(piece, accumulate).err();
            }
            return;
        };
        self.handed(piece.member);
        self.members[piece.member].run_beside(
            &mut || *error = self.run_piece(piece, accumulate).err(),
            &mut || self.side_by_side(rest, lead, accumulate),
        );
    }

    /// Runs one piece on its member, recording how long it was busy; a panic in the member
    /// becomes its device error.
    fn run_piece(&self, piece: &mut Piece<'_>, accumulate: bool) -> Result<()> {
        let m = piece.member;
        self.handed(m);
        let started = Instant::now();
        let device = self.members[m].as_ref();
        let run = std::panic::AssertUnwindSafe(|| {
            if accumulate {
                device
                    .conv_accumulate_view(&piece.op, &piece.inputs, piece.out)
                    .unwrap_or_else(|| {
                        Err(Error::device(
                            device.info().id.clone(),
                            "cannot add a convolution into a residual in place",
                        ))
                    })
            } else {
                device.execute_view(&piece.op, &piece.inputs, piece.out)
            }
        });
        let result = std::panic::catch_unwind(run).unwrap_or_else(|_| {
            Err(Error::device(
                device.info().id.clone(),
                "panicked while running a part of a split op",
            ))
        });
        if let Ok(mut s) = self.state.lock() {
            s.waiting_since[m] = None;
            s.busy_s[m] += started.elapsed().as_secs_f64();
        }
        result
    }

    /// The convolution `inputs` (`[x, w, bias?]`, or with a fourth residual input on a CPU
    /// lead) split into a new output, or `None` when it runs on the lead.
    fn split_execute(&self, op: &Op, inputs: &[&Tensor]) -> Option<Result<Tensor>> {
        let residual = (inputs.len() == 4).then(|| inputs[3]);
        let conv_inputs = &inputs[..inputs.len().min(3)];
        let split = self.plan(op, conv_inputs, residual.is_some())?;
        if residual.is_some_and(|r| r.shape() != &split.shape) {
            return None;
        }
        Some((|| {
            let shape = split.shape.clone();
            let mut values = crate::node::recycle::output_f32(shape.numel()?)?;
            self.run_split(split, residual, &mut values, false)?;
            Tensor::from_vec(shape, values)
        })())
    }
}

impl Device for ChannelSplit {
    fn info(&self) -> &DeviceInfo {
        self.lead().info()
    }

    fn execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        match self.split_execute(op, inputs) {
            Some(out) => Ok(vec![out?]),
            None => self.lead().execute(op, inputs),
        }
    }

    fn execute_into(&self, op: &Op, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<()> {
        match self.split_execute(op, inputs) {
            Some(out) => {
                let out = out?;
                crate::node::check_outputs(op, outputs, std::slice::from_ref(&out))?;
                outputs[0] = out;
                Ok(())
            }
            None => self.lead().execute_into(op, inputs, outputs),
        }
    }

    fn execute_view(&self, op: &Op, inputs: &[TensorView<'_>], out: &mut [f32]) -> Result<()> {
        self.lead().execute_view(op, inputs, out)
    }

    fn conv_accumulate(
        &self,
        op: &Op,
        inputs: &[&Tensor],
        output: &mut Tensor,
    ) -> Option<Result<()>> {
        let Some(split) = self.plan(op, inputs, true) else {
            return self.lead().conv_accumulate(op, inputs, output);
        };
        if output.shape() != &split.shape || output.dtype() != DType::F32 {
            return self.lead().conv_accumulate(op, inputs, output);
        }
        Some(
            output
                .as_f32_mut()
                .and_then(|out| self.run_split(split, None, out, true)),
        )
    }

    fn conv_accumulate_view(
        &self,
        op: &Op,
        inputs: &[TensorView<'_>],
        out: &mut [f32],
    ) -> Option<Result<()>> {
        self.lead().conv_accumulate_view(op, inputs, out)
    }

    fn conv_max_pool(
        &self,
        conv: &Op,
        pool: &Pool2dParams,
        inputs: &[&Tensor],
    ) -> Option<Result<Tensor>> {
        // A split convolution then a pooling on the lead; else the lead's fused path.
        if self.plan(conv, inputs, false).is_some() {
            return None;
        }
        self.lead().conv_max_pool(conv, pool, inputs)
    }

    fn launch(&self, work: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<()> {
        // Its run_batch runs on the lead's threads: started there, it starts in place.
        self.lead().launch(work)
    }

    fn run_batch(&self, body: &mut (dyn FnMut() + Send)) {
        // The ops on the lead's threads, the other members polling for their parts meanwhile.
        self.lead()
            .run_batch(&mut || awake_from(&self.members[1..], &mut *body))
    }
}

/// Runs `body` with every device of `members` kept awake ([`Device::keep_awake`]).
fn awake_from(members: &[Arc<dyn Device>], body: &mut (dyn FnMut() + Send)) {
    match members.split_first() {
        None => body(),
        Some((first, rest)) => first.keep_awake(&mut || awake_from(rest, &mut *body)),
    }
}
