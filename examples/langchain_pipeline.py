"""A LangChain pipeline on brickwork: prompt | ChatBrickwork | parser, batched, streamed, and routed by its plan.

    pip install 'brickwork[langchain]' && python examples/langchain_pipeline.py

The toy world answers; point ChatBrickwork(model=..., library=...) at your own model folder and brick library.
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from orchestrator.integrations.langchain import ChatBrickwork

chat = ChatBrickwork()  # opens the Orchestrator on first use
prompt = ChatPromptTemplate.from_messages([("human", "{instruction}\nInput: {text}")])
chain = prompt | chat | StrOutputParser()

print(chain.invoke({"instruction": "Sort the letters, then apply a Caesar shift of one.", "text": "planet"}))

# batch: all inputs are planned together and run in shared executor batches
jobs = [{"instruction": "What is the sum?", "text": "12 30"},
        {"instruction": "Remove the vowels, then convert to uppercase.", "text": "brickwork"},
        {"instruction": "Write the input backwards.", "text": "lego"}]
print(chain.batch(jobs))

# the plan and the bricks of each answer travel in the message's metadata
message = (prompt | chat).invoke({"instruction": "Double every letter. Then reverse the text.", "text": "abc"})
for step in message.response_metadata["steps"]:
    print(f"{step['instruction']:28} {step['input']:>8} -> {step['output']:8} {step['bricks'] or ['base']}")

for chunk in chain.stream({"instruction": "Count the letters.", "text": "bricks"}):
    print("streamed:", chunk)

# a pipeline that routes itself: look at the plan first, answer only tasks that need no brick
planner = chat.as_planner()


def answer_if_base_only(task: dict) -> str:
    plan = planner.invoke({"instruction": task["instruction"], "input": task["text"]})
    if any(step.config.bricks for step in plan.steps):
        return f"needs bricks {[b.key for s in plan.steps for b in s.config.bricks]}: not answered here"
    return chain.invoke(task)


router = RunnableLambda(answer_if_base_only)
print(router.batch([{"instruction": "Reverse the text.", "text": "abc"},
                    {"instruction": "Apply a Caesar shift of one.", "text": "abc"}]))
