"""Test doubles for the AxBench pipeline: a tiny Gemma-2 chat model and a loopback judge.

`build_tiny_gemma_chat(dir)` saves a random 2-block Gemma-2 checkpoint together with a small
BPE tokenizer trained on AxBench text, carrying Gemma's special tokens and its real chat
template, so `steerjax.models.load(dir)` and `load_tokenizer(dir)` both work on it.
`JudgeServer` speaks chat-completions on 127.0.0.1: rating prompts get a rating derived
from a hash of the prompt, any other prompt (a writing request) a fixed text.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd

import hf_tiny

SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
VOCAB = 384
WRITTEN_REPLY = "Talk about dates and publication years in every answer."


def _training_text(data_root: str, rows: int = 300) -> list:
  frame = pd.read_parquet(os.path.join(
      data_root, "axbench/concept10/prod_2b_l10_v1/generate/train_data.parquet"))
  with open(os.path.join(data_root, "alpaca_eval/alpaca_eval.json"), encoding="utf-8") as f:
    alpaca = [row["instruction"] for row in json.load(f)[:rows]]
  return list(frame["input"][:rows]) + list(frame["output"][:rows]) + alpaca + [WRITTEN_REPLY]


def build_tokenizer(data_root: str):
  """A byte-free BPE (Metaspace, like Gemma's) with ids pad 0, bos 1, eos 2, unk 3."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL),
                                limit_alphabet=90, show_progress=False)
  tok.train_from_iterator(_training_text(data_root), trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                 pad_token="<pad>", unk_token="<unk>",
                                 extra_special_tokens=list(SPECIAL[4:]))
  with open(os.path.join(data_root, "chat_templates/gemma2_chat_template.json")) as f:
    fast.chat_template = json.load(f)["chat_template"]
  return fast


def build_tiny_gemma_chat(directory: str, data_root: str, seed: int = 0):
  """Random Gemma-2 weights (hf_tiny's spec, our vocabulary) + the chat tokenizer."""
  import torch
  import transformers
  tokenizer = build_tokenizer(data_root)
  config = hf_tiny.gemma2_gqa()
  config.vocab_size = len(tokenizer)
  config.max_position_embeddings = 4096   # AlpacaEval instructions are long in a tiny vocab
  config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  hf_tiny.randomize_(model, seed)
  model.save_pretrained(directory, safe_serialization=True)
  tokenizer.save_pretrained(directory)
  return directory


def is_rating_prompt(prompt: str) -> bool:
  return prompt.rstrip().endswith("Rating: [[k]]")


def rating_for(prompt: str) -> int:
  """1 or 2, so harmonic means vary and no score is forced to 0."""
  return 1 + int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) % 2


class _Handler(BaseHTTPRequestHandler):
  def log_message(self, *args):
    pass

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    prompt = body["messages"][-1]["content"]
    server = self.server.owner
    with server.lock:
      server.requests += 1
      server.prompts.append(prompt)
    if server.latency_s:
      time.sleep(server.latency_s)
    if is_rating_prompt(prompt):
      content = f"The text is judged on its own.\nRating: [[{rating_for(prompt)}]]"
    else:
      content = WRITTEN_REPLY
    data = json.dumps({
        "id": "chatcmpl-axbench", "object": "chat.completion", "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)


class _Server(ThreadingHTTPServer):
  request_queue_size = 256   # a judge opens many connections at once


class JudgeServer:
  """Loopback `/v1/chat/completions` on an ephemeral port that answers after `latency_s`;
  shuts itself down after `lifetime_s` even if a test forgets to."""

  def __init__(self, lifetime_s: float = 300.0, latency_s: float = 0.0):
    self.latency_s = latency_s
    self.lock = threading.Lock()
    self.requests = 0
    self.prompts = []
    self._httpd = _Server(("127.0.0.1", 0), _Handler)
    self._httpd.owner = self
    self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={"poll_interval": 0.05}, daemon=True)
    self._watchdog = threading.Timer(lifetime_s, self._httpd.shutdown)
    self._watchdog.daemon = True

  def __enter__(self):
    self._thread.start()
    self._watchdog.start()
    return self

  def __exit__(self, *exc):
    self._watchdog.cancel()
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)
