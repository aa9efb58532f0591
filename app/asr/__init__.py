"""The user's side in words: Qwen3-ASR (mlx-qwen3-asr) over the recorded or live microphone track."""
