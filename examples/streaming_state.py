"""Stream frames through a Polynomial Mixer at constant memory, and check it against the
parallel block-causal forward (the contract of docs/design.md, section 3).

    python examples/streaming_state.py
"""

import torch

from polymixer import PolynomialMixer

torch.manual_seed(0)
frames, tokens_per_frame, width = 12, 64, 128
mixer = PolynomialMixer(width, degree=2, expand=2).eval()
video = torch.randn(1, frames * tokens_per_frame, width)

with torch.no_grad():
    parallel = mixer(video, block_size=tokens_per_frame)  # every frame sees frames <= itself

    state = mixer.init_state(batch_size=1)
    streamed = []
    for frame in video.split(tokens_per_frame, dim=1):  # one frame at a time
        y, state = mixer.step(frame, state)
        streamed.append(y)
    streamed = torch.cat(streamed, dim=1)

print(f"frames: {frames}, tokens seen: {int(state.count.item())}")
print(f"state size: {state.nbytes()} bytes (the same after 1 frame or 1,000)")
print(f"max |streamed - parallel| = {(streamed - parallel).abs().max().item():.2e}")
