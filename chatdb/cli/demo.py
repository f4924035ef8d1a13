"""placeholder"""
COMMANDS: list[object] = []
