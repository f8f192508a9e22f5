"""The lesson: a teacher's walk through what the panels show, one step at a time, on the live page.

Seven short steps (the feature map is a grid of tokens; token i = y*W + x; one row of the softmax;
reshaped, it is the heatmap; heads; layers at different resolutions; the untrained twin), each in
large type for a projector and each pointing at the part of the page it is about: the step outlines
it and opens its tab. The numbers in a step are the pinned pixel's, read from the panels on screen
(their payload), so a step follows a click or the arrow keys. It runs in the page only: no server
round trip, no attention math (it quotes the panels' own cells, tokens and grids).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

import gradio as gr


@dataclass(frozen=True)
class Step:
    """One step: its title, its text (``{name}`` fields are filled in the page from the pinned
    pixel, see ``SCRIPT``), what it outlines (CSS selectors) and the tab it opens."""

    title: str
    text: str
    spot: tuple[str, ...]
    tab: str = "panels"


STEPS = (
    Step(
        "The feature map is a grid of tokens",
        "Inside the model the image is a feature map of C channels on an H×W grid. In <b>{layer}</b> "
        "the grid is {H}×{W}: N = {N} tokens, one per cell, each standing for a {sy}×{sx} patch of "
        "the {IH}×{IW} image.",
        ("#input-image", "#heatmaps figure.sa-panel:nth-of-type({index})"),
    ),
    Step(
        "Token i = y·W + x",
        "The grid is flattened row by row. Your pinned pixel ({py}, {px}) lies in cell (y, x) = "
        "({cy}, {cx}), so it is token i = {cy}·{W} + {cx} = <b>{token}</b>. Press an arrow key on "
        "the image and watch i change.",
        ("#input-image", "#sa-pin", "#heatmaps figure.sa-panel:nth-of-type({index}) figcaption"),
    ),
    Step(
        "One row of the softmax",
        "Token {token}'s query q<sub>i</sub> is compared with every key k<sub>j</sub>: "
        "logit<sub>j</sub> = q<sub>i</sub>·k<sub>j</sub>, then p<sub>j</sub> = softmax(logits). "
        "That is row {token} of the N×N′ attention matrix: {M} numbers that sum to 1. This tab "
        "shows every step for your pixel.",
        ("#mechanics",),
        "how a row is made",
    ),
    Step(
        "Reshaped, the row is the heatmap",
        "Put the {M} numbers back on the {KH}×{KW} key grid and colour them: that is the panel. "
        "1× is an even share (1/{M}); brighter keys get more. Hover the image: each panel is a "
        "new row, computed as you move.",
        ("#heatmaps figure.sa-panel:nth-of-type({index})",),
    ),
    Step(
        "Heads",
        "A layer can have several heads, each with its own queries and keys, so each pixel has one "
        "row per head. The panels show their mean; pick one in <b>head</b>, or all of them with "
        "<b>layers × heads</b> under “more display settings”. This layer has {heads}.",
        ("#head", "#display-more"),
    ),
    Step(
        "Layers at different resolutions",
        "The UNet attends at several sizes: the same pixel is a small cell in a 16×16 layer and a "
        "large one in an 8×8 layer (the outlined squares). Coarse layers mix whole regions; fine "
        "ones, neighbours. Grids here: {grids}.",
        ("#heatmaps .sa-panels",),
    ),
    Step(
        "The untrained twin",
        "Same architecture, random weights: its rows are nearly even (1× everywhere). What differs "
        "between the two is what training taught the attention. Press “compare at the pinned "
        "pixel”.",
        ("#compare-run", "#compare"),
        "compare",
    ),
)

STYLE = """
.sa-lesson { font-size: 22px; line-height: 1.45; }
.sa-lesson h3 { font-size: 26px; margin: 0 0 6px; }
.sa-lesson .sa-lesson-nav { display: flex; gap: 12px; align-items: center; margin-top: 10px; }
.sa-lesson button { font-size: 18px; padding: 6px 16px; border-radius: 6px; border: 1px solid #999;
  background: #fff; color: #111; cursor: pointer; }
.sa-lesson button:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
.sa-lesson button:disabled { opacity: 0.4; cursor: default; }
"""

SCRIPT = """
(() => {
  const steps = JSON.parse(element.querySelector('.sa-lesson').dataset.steps);
  let at = 0, spots = [];
  // the pinned pixel's numbers, from the panels on screen (the first layer on a grid, by default)
  function facts() {
    const el = document.querySelector('#heatmaps .sa-panels');
    const data = el && JSON.parse(el.dataset.payload);
    if (!data) return null;
    const index = Math.max(0, data.layers.findIndex(l => l.queries.grid && l.keys.grid));
    const layer = data.layers[index], [H, W] = layer.queries.grid, [IH, IW] = data.image_hw;
    const [cy, cx] = layer.pinned.cell, [KH, KW] = layer.keys.grid || [1, layer.keys.count];
    const grids = [...new Set(data.layers.map(l => l.queries.grid ? l.queries.grid.join('×') : 'text'))];
    return { layer: layer.name, index: index + 1, H, W, N: H * W, IH, IW, sy: IH / H, sx: IW / W,
      py: data.pixel[0], px: data.pixel[1], cy, cx, token: layer.pinned.token, M: layer.keys.count,
      KH, KW, heads: layer.heads === 1 ? 'one head' : `${layer.heads} heads`, grids: grids.join(', ') };
  }
  const fill = (text, f) => text.replace(/\\{(\\w+)\\}/g, (m, k) => (f && k in f ? f[k] : m));
  function openTab(name) {
    const tabs = [...document.querySelectorAll('#views [role=tab]')];
    const named = tabs.filter(b => b.textContent.trim() === name);
    const tab = named.find(b => b.offsetParent) || named[0]; // Gradio keeps a hidden copy of the tab bar
    if (tab && tab.getAttribute('aria-selected') !== 'true') tab.click();
  }
  function outline(selectors, f) {
    spots.forEach(e => { e.style.outline = e.dataset.saOutline || ''; });
    spots = selectors.flatMap(s => [...document.querySelectorAll(fill(s, f))]);
    spots.forEach(e => { e.dataset.saOutline = e.style.outline; e.style.outline = '4px solid #f59e0b'; });
  }
  function show() {
    const step = steps[at], f = facts(), box = element.querySelector('.sa-lesson');
    box.dataset.step = String(at + 1);
    box.querySelector('h3').textContent = `${at + 1} / ${steps.length} · ${step.title}`;
    box.querySelector('.sa-lesson-text').innerHTML = fill(step.text, f);
    box.querySelector('.sa-lesson-prev').disabled = at === 0;
    box.querySelector('.sa-lesson-next').disabled = at === steps.length - 1;
    openTab(step.tab);
    setTimeout(() => outline(step.spot, f), 50); // after the tab has rendered its content
  }
  element.querySelector('.sa-lesson-prev').addEventListener('click', () => {
    at = Math.max(0, at - 1);
    show();
  });
  element.querySelector('.sa-lesson-next').addEventListener('click', () => {
    at = Math.min(steps.length - 1, at + 1);
    show();
  });
  // the numbers follow the pinned pixel while the lesson is open
  const panels = document.querySelector('#heatmaps');
  if (panels) new MutationObserver(() => { if (element.offsetParent) {
    const box = element.querySelector('.sa-lesson');
    box.querySelector('.sa-lesson-text').innerHTML = fill(steps[at].text, facts());
  } }).observe(panels, { attributes: true, subtree: true, attributeFilter: ['data-payload'] });
  // the first step is shown when the lesson is first opened
  const seen = new IntersectionObserver((entries) => {
    if (entries.some(e => e.isIntersecting)) { seen.disconnect(); show(); }
  });
  seen.observe(element.querySelector('.sa-lesson'));
})();
"""


class LessonView:
    """The lesson, folded above the views until a teacher opens it."""

    def __init__(self) -> None:
        title = "lesson: how an attention map is made (for teaching)"
        with gr.Accordion(title, open=False, elem_id="lesson"):
            self.html = gr.HTML(_markup(), elem_id="lesson-steps", css_template=STYLE, js_on_load=SCRIPT)


def _markup() -> str:
    """The lesson's frame: the steps travel as JSON and are filled in by ``SCRIPT``."""
    steps = html.escape(json.dumps([asdict(s) for s in STEPS]))
    return (
        f'<div class="sa-lesson" data-steps="{steps}" data-step="1"><h3></h3>'
        '<div class="sa-lesson-text" aria-live="polite"></div><div class="sa-lesson-nav">'
        '<button class="sa-lesson-prev">← back</button><button class="sa-lesson-next">next →</button>'
        "</div></div>"
    )
