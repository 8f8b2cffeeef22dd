"""The pruning engine: criteria and scores, dependency-group surgery and the MAC search,
schedules, training loops, and the protocol every step of every method shares. It keeps no
run state; the stages drive it."""
