"""Where brickwork meets other tools: LangChain (`langchain`), batch jobs over files (`batch`), and Ray (`ray`).

Each module imports its library (langchain_core, ray, pyarrow) only when used.
"""
