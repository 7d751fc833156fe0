"""Command-line entry points (`slam-*`) and what they share (`common`)."""
