"""`hearth up/down/ps`: the whole stack as supervised processes on one box."""
