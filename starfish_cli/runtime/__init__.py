"""Where and how the work runs: device and precision, torchrun processes, atomic writes, progress,
console logging, and the one error type users see."""
