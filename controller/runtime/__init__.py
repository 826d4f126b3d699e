"""HAProxy Runtime API and master CLI: typed commands, parsers and asyncio clients.

No re-exports: the pure core (`controller.plan`) builds commands from
`controller.runtime.commands` without loading the asyncio clients (`client`, `master`).
"""
