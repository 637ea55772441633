"""Paper Table 1: where the SV acts, on Concept10 (concept and overall scores).

  python -m steerjax.main --config=configs/paper_table1.py:g2b --workdir=runs/table1_g2b

The `search` job over positions p2, s2, p1+s1, p4, s4, p2+s2, p8, s8, p4+s4 and the full
prompt (pN = the first N prompt tokens, sN = the last N: `fN`, `lN` here) for a Lang SV at
lambda 8 and the model's Table 11 PrOSV Lang beta and eta_alpha, 6 epochs, seeds 42..44
(configs/paper_ablations.py). search.md lists each position's mean and spread over the
seeds.
"""

from configs import paper_ablations

POSITIONS = ("f2", "l2", "f1+l1", "f4", "l4", "f2+l2", "f8", "l8", "f4+l4", "prompt")


def get_config(arg=None):
  c = paper_ablations.make_config(arg or "g2b", "f2+l2")
  c.search.positions = POSITIONS
  return c
