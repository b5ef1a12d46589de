import logging, random, sys, time, torch
from pathlib import Path
torch.set_num_threads(2)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
from bricks.toyworld.tokenizer import build_tokenizer
from bricks.toyworld.pretrain import PretrainConfig, pretrain
from bricks.toyworld.skills import EMERGENT_SKILLS
from bricks.toyworld.tasks import sample_single
from bricks.evaluation import exact_match_by_skill
out = Path(sys.argv[1]); steps = int(sys.argv[2])
tok = build_tokenizer(out / "tokenizer")
rng = random.Random("val")
val = [sample_single(rng, s, "validation").to_json() for s in EMERGENT_SKILLS for _ in range(50)]
val_long = [sample_single(rng, s, "validation", long_fraction=1.0).to_json() for s in ("reverse","sort","uppercase","count") for _ in range(25)]
def on_ckpt(step, model):
    if step % 1000 and step != steps: return
    t=time.time()
    r = exact_match_by_skill(model, tok, val); rl = exact_match_by_skill(model, tok, val_long)
    logging.info("EVAL step %d %s | long %s (%.1fs)", step, {k: round(v.accuracy,2) for k,v in r.items()}, {k: round(v.accuracy,2) for k,v in rl.items()}, time.time()-t)
model = pretrain(out, tok, PretrainConfig(steps=steps), on_step=lambda s,n,l: logging.info("step %d loss %.4f", s, l) if s % 100 == 0 else None, on_checkpoint=on_ckpt)
model.save_pretrained(out / "model"); tok.save_pretrained(out / "model")
logging.info("DONE")
