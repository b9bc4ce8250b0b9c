"""Objects taught where they are: each label token's cross-attention map pulled onto its object's mask.

    grounding = Grounding(net, masks, multi_hot, labels)  # masks: (n, 64, 64) object indices in label order
    with grounding.recording(idx):                        # around the training forward pass of images idx
        loss = loss_fn(model, x0, cond, gen)
    total = loss + weight * grounding.loss()              # images whose labels were dropped take no part

The token loss of TokenCompose (Wang et al. 2024, arXiv 2312.03626): for every cross-attention layer at a
resolution of at least `min_size`, the share of a label token's attention mass (averaged over heads) that
falls inside its object's visible pixels is pushed toward 1, as (1 - share)^2, for every object visible at
that resolution. The renderer writes the masks (render_iclevr.py --masks); images whose labels were
dropped for classifier-free guidance take no part. diffusers computes attention inside fused kernels,
so the layers measured here run a processor that computes the probabilities explicitly while recording
(the plain fused one otherwise). A "scene" token is always present (model.LabelUNet), so pixels of the
ground have a token to attend to other than the objects'.
"""
import contextlib

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from utils import MAX_OBJECTS, ICLEVRError


class RecordingProcessor(AttnProcessor):
    """diffusers' attention, with its probabilities appended to `store` while store.active is set."""

    def __init__(self, store):
        super().__init__()
        self.store, self.fused = store, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if not self.store.active:
            return self.fused(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        scores = attn.get_attention_scores

        def recorded(query, key, mask=None):
            probs = scores(query, key, mask)
            self.store.maps.append(probs)
            return probs
        attn.get_attention_scores = recorded  # this call only: the instance attribute shadows the method
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores


def token_positions(labels, label2idx):
    """For each object of a label list (label-file order), the position of its token in LabelUNet.condition
    (which sorts the present labels by index)."""
    order = sorted(label2idx[label] for label in labels)
    return [order.index(label2idx[label]) for label in labels]


def token_masks(masks, label_lists, label2idx, size):
    """(n, MAX_OBJECTS, size, size) float16: the share of each token's object in each cell of a size x size grid."""
    n, full = masks.shape[0], masks.shape[-1]
    if full % size:
        raise ICLEVRError(f"masks of {full}x{full} pixels do not pool onto a {size}x{size} attention grid")
    out = torch.zeros(n, MAX_OBJECTS, size, size, dtype=torch.float16)
    for start in range(0, n, 2048):
        chunk = masks[start:start + 2048].long()
        onehot = F.one_hot(chunk, MAX_OBJECTS + 1)[..., 1:].permute(0, 3, 1, 2).float()  # object k -> channel k-1
        pooled = F.avg_pool2d(onehot, full // size).half()
        for i, labels in enumerate(label_lists[start:start + 2048]):
            for k, position in enumerate(token_positions(labels, label2idx)):
                out[start + i, position] = pooled[i, k]
    return out


class Grounding:
    """The recording processors installed on a LabelUNet, each image's token masks, and the loss."""

    def __init__(self, net, masks, label_lists, label2idx, min_size=4):
        if not (net.label_tokens and net.scene_token):
            raise ICLEVRError("the grounding loss needs a preset with label tokens and a scene token (cpu64)")
        self.active, self.maps, self.idx, self.seen = False, [], None, None
        unet, side = net.unet, net.sample_shape[-1] // net.patch
        sizes, processors = set(), {}
        for name, processor in unet.attn_processors.items():
            size = side // 2 ** layer_depth(name, len(unet.config.block_out_channels))
            if name.endswith("attn2.processor") and size >= min_size:
                processors[name] = RecordingProcessor(self)
                sizes.add(size)
            else:
                processors[name] = processor
        if not sizes:
            raise ICLEVRError(f"the UNet has no cross-attention at {min_size}x{min_size} or finer to ground")
        unet.set_attn_processor(processors)
        net.register_forward_pre_hook(self.remember_condition)
        self.targets = {size: token_masks(masks, label_lists, label2idx, size) for size in sorted(sizes)}

    def remember_condition(self, net, args):
        """The multi-hot the recorded pass saw (zeros where the labels were dropped for guidance)."""
        if self.active and torch.is_grad_enabled():
            self.seen = args[2]

    @contextlib.contextmanager
    def recording(self, idx):
        """Record the attention of the forward passes with gradient inside, for the images idx."""
        self.maps, self.idx, self.active = [], idx, True
        try:
            yield
        finally:
            self.active = False

    def loss(self):
        """Mean (1 - share inside the mask)^2 over recorded layers and visible objects of labelled images."""
        maps = [m for m in self.maps if m.requires_grad]
        if not maps:
            raise ICLEVRError("no cross-attention was recorded: call loss() after a forward pass inside recording()")
        n, terms = len(self.idx), []
        for probs in maps:
            size = int(round(probs.shape[1] ** 0.5))
            attn = probs.float().view(n, -1, size * size, probs.shape[-1]).mean(1)[..., :MAX_OBJECTS]  # (n, HW, 3)
            target = self.targets[size][self.idx.cpu()].to(attn.device).flatten(2).transpose(1, 2).float()
            inside = (attn * target).sum(1) / attn.sum(1).clamp_min(1e-6)  # (n, 3)
            visible = (target.sum(1) > 0) & (self.seen.sum(1, keepdim=True) > 0)
            terms.append(((1 - inside) ** 2)[visible])
        self.maps = []
        every = torch.cat(terms)
        return every.mean() if len(every) else every.sum()


def layer_depth(name, levels):
    """How many times the UNet has halved its grid where the attention layer `name` sits."""
    part = name.split(".")
    if part[0] == "down_blocks":
        return int(part[1])
    if part[0] == "up_blocks":
        return levels - 1 - int(part[1])
    return levels - 1  # the mid block
