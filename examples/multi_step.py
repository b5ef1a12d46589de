"""Plan and run multi-step instructions on the toy world, then replay a saved plan.

    python examples/multi_step.py
"""

from orchestrator import Orchestrator, Plan

with Orchestrator.from_pretrained() as orc:  # the toy world: model, brick library, index
    result = orc.run("Sort the letters, then apply a Caesar shift of one. Finally, convert to uppercase.",
                     input="planet")
    for step in result.steps:
        bricks = ", ".join(f"{b.key} ({b.score:.2f})" for b in step.bricks) or "base model"
        print(f"{step.index}. {step.instruction:40} {step.input:>10} -> {step.output:10} [{bricks}]")
    print("answer:", result.output)

    plan_json = orc.plan("Remove the vowels and then double every letter.", input="planet").to_json()
    print("replayed:", orc.run_plan(Plan.from_json(plan_json)).output)

    batch = orc.run_batch([("What is the sum?", "12 30"), ("What is the difference?", "50 8"),
                           ("Write the input backwards.", "brick")])
    print("batch:", [r.output for r in batch])
