"""The sealed evaluation protocol of the bundled models (issue 23), fixed before its seeds were run.

Why a file of its own: the earlier held-out seeds (:data:`SPENT_SEEDS`) were run again and again
while the evaluation was being developed (tables on them from ``78c483b`` to ``f9b5c9b`` said "no
layer meets" at t = 500; noise levels and controls were then added and the verdict reworded until
``55fd575`` reported "meets"). They are therefore development seeds like :data:`DEV_SEEDS`. This
file states, before any run on them, the new seeds, the targets, the headline rule and the verdict
rule; ``spatial-attn eval`` reads every figure's target from here, and ``tests/test_protocol.py``
fails if this file's bytes change, so a change cannot go unnoticed. The README names the commit
that fixed it.

**Round 2** (issue 23, second round). The first sealed seeds (:data:`FIRST_SEALED_SEEDS`) were run
once, at commit ``1ff4eef`` (``checkpoints/sealed-run.json``). Their table showed which models
missed and the models were changed after it, so they are development seeds now too. This round
names new sealed seeds and a new record; the targets, the headline rule and the verdict rule are
the first round's, unchanged.

**Round 3** (issue 23, third round). The second sealed seeds (:data:`SECOND_SEALED_SEEDS`) were run
once, at commit ``95779ac`` (``checkpoints/sealed-run-2.json``). Their table showed the in-painter's
decoy share and the SAGAN's plus coverage and training time short of their targets, and those models
were changed after it: they are development seeds now. This round names new sealed seeds and a new
record, committed before either model of the round was evaluated; the targets, the headline rule and
the verdict rule are the first round's, unchanged.

**Round 4** (issue 23, fourth round). The third sealed seeds (:data:`THIRD_SEALED_SEEDS`) were run
once, at commit ``92519ca`` (``checkpoints/sealed-run-3.json``). Their table showed the SAGAN's plus
coverage (13.1%) and the in-painter's decoy share (upper bound 0.52) short of their targets; any model
changed after it is developed on the dev seeds and the earlier sealed seeds, all consulted from now
on. This round names new sealed seeds and a new record, committed before any model of the round was
evaluated; the targets, the headline rule and the verdict rule are the first round's, unchanged.

**The sealed seeds** (:data:`SEALED_SEEDS`) are run once, at the end, when the models are final,
by ``spatial-attn eval --sealed``: it writes :data:`SEALED_RECORD` into the checkpoints folder
*before* it runs (so even a crashed run counts as a run) and refuses to run while that record
exists, unless ``--force``, which the record then lists as a second run.

**Headline rule** (picked on :data:`DEV_SEEDS` only, never on the sealed seeds): per model, among
its attention rows (a layer, or a layer at one noise level for a diffusion model), the row with the
largest ``min(content lift / CONTENT_TARGET, follows / FOLLOW_TARGET, CONTROL_SHARE / cheek share,
CONTROL_SHARE / decoy share)`` on the dev seeds' point estimates (shares floored at 1e-6).

**Verdict rule**: a ``>= x`` target is met when the 95% interval's **lower** bound is ``>= x``, a
``<= x`` target when its **upper** bound is ``<= x`` (never the point estimate). Intervals: 1,000
bootstrap resamples over faces (samples for the generators), fixed generator seed 0, 2.5 and 97.5
percentiles, ratios resampled numerator and denominator together (a ratio whose denominator is 0
counts as inf, or 1 if its numerator is 0 too). Figures given without an interval (coverage) are
read at their value. A model meets the attention target when its headline row meets all four of:
content lift, follows, cheek share and decoy share. Another row meeting them is named in the
verdict, not counted.

The measures themselves (lifts, the moved-eye test, probes) are those of ``evaluate.py``,
``eye_attention.py`` and ``sample_eval.py``. The sealed run records its commit: any change to them
between the commit that fixed this file and that one is in ``git log`` for anyone to judge.

**The controls** (each reported beside the figure it controls):

* *cheek share*: the lift onto the other eye from a cheek cell :data:`CHEEK_PX` below the query
  eye's centre, over the lift from the eye itself. A layer that looks for the other eye because
  the query is an eye gives a small share; one that reaches the other eye from anywhere nearby
  gives ~1.
* *decoy share*: the moved-eye test with the moved eye replaced by a non-eye disc of the same size
  and the same luminance contrast against the skin (skin-toned, not an eye colour), over the
  moved-eye test's own rate. A layer that follows the eye gives a small share; one that follows
  anything that moved gives ~1.
"""

from __future__ import annotations

#: Looked at while the evaluation and the models were developed.
DEV_SEEDS = (3, 4, 5)
#: The held-out seeds of issues 11 to 13, consulted during development: development seeds now.
SPENT_SEEDS = (7919, 7927, 7933)
#: The first round's sealed seeds, run once at ``1ff4eef``; the models changed after their table.
FIRST_SEALED_SEEDS = (52361, 52379, 52391)
#: The second round's sealed seeds, run once at ``95779ac``; two models changed after their table.
SECOND_SEALED_SEEDS = (64869, 84946, 89756)
#: The third round's sealed seeds, run once at ``92519ca``; consulted in round 4 like dev seeds.
THIRD_SEALED_SEEDS = (10943, 35804, 98463)
#: Never run before this file was committed; run once, by ``spatial-attn eval --sealed``.
SEALED_SEEDS = (26516, 44873, 77575)
#: What the sealed run measures per seed (``spatial-attn eval``'s defaults).
FACES_PER_SEED = 32  # real faces for the attention figures, and 4 x as many images per judge probe
SAMPLES_PER_SEED = 64  # generated samples judged per model
#: Where a diffusion model's layers are measured, as fractions of its schedule (each layer a row per
#: level): t = 100, 250 (where the app opens) and 500 of 1000.
NOISE_LEVELS = (0.1, 0.25, 0.5)
#: The record the sealed run leaves in the checkpoints folder (earlier rounds': sealed-run.json,
#: sealed-run-2.json and sealed-run-3.json).
SEALED_RECORD = "sealed-run-4.json"

# -- targets (lower bound >= / upper bound <=, see the verdict rule) ---------------------------------
CONTENT_TARGET = 2.0  # content lift: valid / other-eye-erased lift
FOLLOW_TARGET = 0.8  # share of moved-eye trials whose peak follows the eye
CONTROL_SHARE = 0.5  # cheek share and decoy share at most this
CHEEK_PX = 5.0  # the non-eye query: this many pixels below the query eye's centre
VALID_TARGET = 0.98  # standard valid faces judged valid
MOVED_FACE_TARGET = 0.90  # valid faces shifted +-4 px or scaled 0.8-0.9x, judged valid
PROBE_TARGET = 0.10  # most of any broken kind (mouthless, blurred, soft shape pairs) judged valid
FACE_SHIFT_PX = 4.0  # the shifted probe: the whole head moved this far up, down, left or right
FACE_SCALE = (0.8, 0.9)  # the scaled probe: the head scaled by a factor drawn from this range
SOFT_PAIRS = (("ring", "vbar"), ("disc", "plus"), ("plus", "ring"))  # shape pairs judges confuse
BLUR_SIGMA = 1.2  # the blurred probes (pixels)
SAMPLES_VALID_TARGET = 0.80  # generated samples judged valid
COVERAGE_TARGET = 0.50  # SAGAN: every eye colour and shape at least this share of its share in data
COLLAPSE_TARGET = 0.10  # SAGAN generator: most eye queries collapsed onto one grid row
GENERATOR_PEAK_TARGET = 0.50  # SAGAN generator: an eye query's peak on the other eye, from either eye
