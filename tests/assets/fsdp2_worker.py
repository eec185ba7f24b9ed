"""torchrun worker for tests/test_multiprocess.py: the scorer module under FSDP2 on a CPU mesh.

argv: MODEL_DIR OUT_DIR [lora]. With `lora`, the LM gets LoRA adapters first (seed 0), as
train.lora=true does. Each of the processes shards the tiny model with torch's fully_shard
(one group per decoder layer, the CompletionScorer as root, as accelerate's FSDP2 does), scores
the same batch, runs backward, and writes its full gradients (gathered from the shards); rank 0
then writes the full state dict through save_pretrained, as DPONLLTrainer.save_full_model does
under FSDP2.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from irpo_train.scorer import CompletionScorer

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
lora = sys.argv[3:] == ["lora"]
lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
if lora:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
scorer = CompletionScorer(lm)
for layer in lm.get_decoder().layers:
    fully_shard(layer, mesh=mesh)
fully_shard(scorer, mesh=mesh)

torch.manual_seed(0)
ids = torch.randint(5, 1000, (4, 24))
mask = torch.ones_like(ids)
completion = torch.zeros_like(ids, dtype=torch.bool)
completion[:, 10:] = True
logps, lengths = scorer(ids, mask, completion)
(-(logps / lengths).mean()).backward()
grads = {name: p.grad.full_tensor() for name, p in scorer.named_parameters() if p.grad is not None}
torch.save({"logps": logps.detach(), "grads": grads}, out / f"fsdp2-rank{rank}.pt")
if lora:  # the adapters' gradients are the point; saving adapters is PEFT's and accelerate's
    dist.destroy_process_group()
    sys.exit(0)
state = get_model_state_dict(scorer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    lm_state = {k.removeprefix("lm."): v for k, v in state.items()}
    lm.save_pretrained(out / "saved", state_dict=lm_state)
dist.barrier()
dist.destroy_process_group()
