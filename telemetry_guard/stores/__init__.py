"""Where the guard keeps state outside the process: Redis clients, Lua scripts, writers."""
