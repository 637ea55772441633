"""Paper Fig. 3: the concept score over beta x eta_alpha on Concept10, one heatmap per model.

  python -m steerjax.main --config=configs/paper_fig3.py:g2b --workdir=runs/fig3_g2b
  (g2b, g9b: PrOSV p4+s4 = f4+l4; q32b: p2+s2 = f2+l2)

The `search` job over beta {1, 2, 4, 8} x eta_alpha {0.1, 1, 10, 20} (the paper's Table 10
axes) for a Lang PrOSV at lambda 8, 6 epochs, seeds 42..44 (configs/paper_ablations.py).
Writes search.md (each point's mean and spread over the seeds) and heatmap.png (the mean
concept score, beta down, eta_alpha across).
"""

from configs import paper_ablations

POSITIONS = {"g2b": "f4+l4", "g9b": "f4+l4", "q32b": "f2+l2"}


def get_config(arg=None):
  model = arg or "g2b"
  c = paper_ablations.make_config(model, POSITIONS.get(model, ""))
  c.search.update(beta=(1.0, 2.0, 4.0, 8.0), lr_factor=(0.1, 1.0, 10.0, 20.0),
                  heatmap=("beta", "lr_factor"), heatmap_score="concept")
  return c
