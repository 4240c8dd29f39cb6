import sys, json, os, time
os.environ.setdefault("MUJOCO_GL","egl")
from pathlib import Path
from eval.peers import eval_policy
from eval.job_steps import subprocess_env
pol, out = sys.argv[1], Path(sys.argv[2]); extra = sys.argv[3:]
os.environ.update(subprocess_env(Path("outputs/mw_a")))
t=time.time()
r = eval_policy(Path(pol), "button-press-v3,drawer-open-v3,door-open-v3", 20, 100000, 150, 64, out, 20, extra)
print("RESULT", out, extra, {k:v["pc_success"] for k,v in r["per_task"].items()}, r["pc_success"], "eval_s", round(r["eval_s"]), "wall", round(time.time()-t))
