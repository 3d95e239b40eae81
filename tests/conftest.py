import os

import torch
from hypothesis import settings

# Property tests on 2 CPU cores: bounded examples, no per-example deadline (first calls JIT-warm kernels).
settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(min(2, torch.get_num_threads()))
