"""`innerpissa serve`: an OpenAI-compatible HTTP server for a model with named InnerPiSSA adapters, where
every request carries its own steering coefficients (`"steer": {"sentiment": 0.8}`).

Modules, lower first: `prompt` (a request's messages or prompt as token ids), `sampling` (a row's next
token and its text with stop strings), `schema` (request validation; errors in OpenAI's shape naming the
field), `batch` (the rows decoding together, each at its own coefficients, joining and leaving between
steps: the sweep decoder's `prefill` and `decode_step`), `engine` (the one thread that runs the model, its
bounded queue and limits), `app` (FastAPI routes, server-sent events, the playground page in `static/`),
`launch` (the command line: load the model and adapters, check the options, run uvicorn).

All model work runs on the engine's single thread: `steer` contexts never overlap and requests reach the
model only through the engine's queue (the rest of the server is asyncio and never touches the model).
"""
