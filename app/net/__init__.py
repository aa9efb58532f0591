"""The PersonaPlex websocket protocol: `ppchat serve` and `ppchat talk --server`.

One job per module: `protocol` (message framing), `params` (the query string), `ogg` and
`opus` (the audio stream), `endpoint` (the socket as an audio endpoint for the step thread),
`server`, `client` (the transport) and `remote` (a remote model as a frame processor).
"""
