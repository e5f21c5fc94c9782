"""How to distill: loss functions, teachers (external, or the student's own best state), and when to refresh."""
