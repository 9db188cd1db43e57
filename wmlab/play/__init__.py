"""Play inside any world model that decodes, in the browser: `wmlab play RUN_DIR`.

session.py   what one player does: the dream (an ImaginedEnv), the real environment beside
             it, the key map, the sampling knobs, uploads, recordings, message checks
server.py    the local ASGI server (starlette + uvicorn + websockets) and the command
static/      the page: plain HTML, JavaScript and CSS, no build step, no network
measure.py   frame rate and key-to-frame latency in a real headless browser (Playwright)
"""
