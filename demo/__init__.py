"""The demo corpus's vocabulary and its fixed prompt-following classifier.

It sits beside tasks/ and infra/, under neither: the demo mirror (infra/mirror) draws and captions
scenes from it, and the steps (tasks/) score and report against it, while infra/ imports no task.
It imports numpy only, never tasks, flows, infra or model.
"""
