"""benchmarks.step_time's memory figures: the optimizer state it reports is the layout the
optimizer promises ((2N+1)P at forget=1, (3N+1)P with personal bests, 2P for Adam), and a
step's peak is never below what stays resident."""

import torch

from benchmarks.step_time import measure_memory

# swarm-wide scalars (losses per particle, counters, the random stream's state) and Adam's
# per-tensor step counters: small next to P, but not zero
_SMALL = 8 * 1024


def test_state_bytes_follow_the_documented_layout():
    for n in (1, 3):
        figures = measure_memory(torch.device("cpu"), n, batch=8)
        p = figures["adam"]["param_bytes"]
        assert p > 100_000  # the Fashion-MNIST CNN, float32
        expected = {
            "adam": 2 * p,
            "closure": (2 * n + 1) * p,  # position, velocity, global best
            "closure_forget_half": (3 * n + 1) * p,  # + personal bests
            "vmap": (2 * n + 1) * p,
        }
        for case, want in expected.items():
            got = figures[case]["state_bytes"]
            assert want <= got < want + _SMALL, (n, case, got, want)
            assert figures[case]["peak_bytes"] >= got + p, (n, case)
