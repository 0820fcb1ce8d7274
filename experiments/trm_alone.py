"""Can the TRM's own recursion carry out the depth task's steps, with no pass of the language model between them?

The time target (issue 14: an answer 5x shorter than written reasoning's) needs the four latent steps of a depth-4
answer to cost under about three backbone passes in all (docs/RESULTS.md, Experiment 1r), so the steps would have to run
in the TRM's supervision steps, each one's carry the next one's start, with no feedback round of the language model to
compute a step's result for it. This probe asks whether the TRM's network can do that at all: a small character-level
SmolLM3 reads the question, the model's own `HiddenStateTRM` compresses its hidden states into K latents and runs N_sup
supervision steps of T cycles, and supervision step s must decode written step s ("12*3=36"), character i from latent i,
through a linear head. Steps past a problem's depth decode the fill (an empty step). Nothing reads the thoughts back:
whatever is right, the reader, the compressor and the recursion computed from the question alone (the reader and the
compressor run once, before the first step, so every later step is the recursion's; with `--reread` the compressor also
reads the reader's states again at each later step). The TRM is built and initialised as `SmolLMTRMForCausalLM` builds
it (session 23's CPU runs, commits 1e4aeae and 1ddb8d5, started its linear layers at PyTorch's defaults instead), except
that its thoughts come out at scale 1, not at the token embeddings' scale, since a linear head reads them (session 24's
runs before commit "trm_alone: thoughts at scale 1" had the embeddings' scale, 0.02, and learned more slowly in a short
CPU check).

    python -m experiments.trm_alone --steps 3000 --output experiments/results/trm_alone/run.json   # and run.md

Reported per test depth (1-6, each with N_sup = its depth): the share of problems whose every step decodes right,
whose last step's result (the answer) is right, and each step's share of right results. Each problem's decoded steps
and answer go to `run/depth<D>/generations.jsonl`, the harness's layout, so that two runs compare question by question
(`python -m experiments.paired_evals A/depth4/generations.jsonl:B/depth4/generations.jsonl --names a,b --output F`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SmolLM3Config, SmolLM3Model

from configuration_smollm_trm import SmolLMTRMConfig
from experiments.run import arith_test_size
from modeling_smollm_trm import COMPILE_MODES, SmolLMTRMForCausalLM
from smollm_trm.arith import QUESTION_FORMS, make_arith
from smollm_trm.rows import write_jsonl

FILL = "_"  # the character of an empty position: after a step's line, and every position of a step past the depth
PAD = " "  # not a character of any step line, so it can pad questions without meaning a step's text
TEST_DEPTHS = (1, 2, 3, 4, 5, 6)
TRAIN_DEPTH = 4  # operations per training problem, at most (a packed row holds two problems)
MAX_STEPS = 2 * TRAIN_DEPTH  # latent steps of a training row or a test problem, at most


class Characters:
    """The character vocabulary of the questions and the step lines."""

    def __init__(self, texts: list[str]):
        self.chars = sorted(set("".join(texts)) | {FILL, PAD} | set("0123456789+-*/="))
        self.index = {char: i for i, char in enumerate(self.chars)}

    def encode(self, text: str, width: int, pad: str) -> list[int]:
        if len(text) > width:
            raise ValueError(f"{text!r} is longer than its width {width}")
        return [self.index[char] for char in text.ljust(width, pad)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids).rstrip(FILL)


def encode_problems(problems: list[dict], chars: Characters, steps: int, num_latents: int):
    """(question ids (N, L) right-padded, their mask, step targets (N, steps, K))."""
    width = max(len(problem["question"]) for problem in problems)
    questions = torch.tensor([chars.encode(p["question"], width, PAD) for p in problems])
    mask = torch.tensor([[i < len(p["question"]) for i in range(width)] for p in problems])
    targets = []
    for problem in problems:
        lines = problem["reasoning"].split("\n")
        lines = lines + [""] * (steps - len(lines))
        targets.append([chars.encode(line, num_latents, FILL) for line in lines[:steps]])
    return questions, mask, torch.tensor(targets)


class StepsAlone(nn.Module):
    """Reader (a small SmolLM3 over the question's characters), the model's TRM, a head from thoughts to characters."""

    def __init__(self, vocab: int, width: int, trm_width: int, num_latents: int, n_latent_steps: int, n_cycles: int,
                 step_embedding: bool = False, reread: bool = False):
        super().__init__()
        reader = SmolLM3Config(vocab_size=vocab, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               pad_token_id=None, bos_token_id=None, eos_token_id=None)
        self.reader = SmolLM3Model(reader)
        config = SmolLMTRMConfig(text_config=reader.to_dict(), num_latents=num_latents, trm_hidden_size=trm_width,
                                 trm_num_layers=2, trm_num_heads=4, n_latent_steps=n_latent_steps, n_cycles=n_cycles,
                                 trm_qk_norm=True, think_token_id=0)  # no <think> is read: any id
        self.trm = SmolLMTRMForCausalLM(config).model.thoughts  # initialised as the model initialises it
        # except the thoughts' scale: the model sets it to its token embeddings' (0.02 here), which a linear head
        # reads as near-zero logits (session 24, CPU, reduced size: the loss at step 300 was 0.89 at that scale,
        # 0.69 at 1; experiments/results/trm_alone/README.md)
        nn.init.ones_(self.trm.out_norm.weight)
        self.head = nn.Linear(width, vocab)
        # Which step the recursion is at, added to its input: the carry alone must otherwise tell step s which
        # instruction is next. Zeros at first, so the steps past the trained depth add nothing untrained.
        self.step_embedding = nn.Parameter(torch.zeros(MAX_STEPS, trm_width)) if step_embedding else None
        self.reread = reread  # each step after the first reads the question again, asking with the last step's y

    def forward(self, questions: torch.Tensor, mask: torch.Tensor, steps: int, n_cycles: int,
                carry_gradient: bool = False) -> torch.Tensor:
        """(B, steps, K, vocab) logits: each supervision step's thoughts read as characters. The steps run as
        `HiddenStateTRM.forward` runs them (its halting and feedback aside: neither is used here); `carry_gradient`
        instead backpropagates through every cycle of every step, so that a step learns what to leave in the carry
        for the next one."""
        context = self.reader(input_ids=questions, attention_mask=mask.long()).last_hidden_state
        x = self.trm.compressor(context, mask)
        carry = self.trm.initial_carry(x)
        logits = []
        for step in range(steps):
            if self.reread and step:  # a cross-attention into the reader's states: no pass of the reader
                x = self.trm.compressor(context, mask, state=carry.y if carry_gradient else carry.y.detach())
            x_step = x if self.step_embedding is None else x + self.step_embedding[step]
            if carry_gradient:
                for _ in range(n_cycles):
                    carry = self.trm.latent_recursion(x_step, carry)
            else:
                carry = self.trm.deep_recursion(x_step, carry.detach(), n_cycles)
            logits.append(self.head(self.trm.thoughts(carry.y)))
        return torch.stack(logits, dim=1)


def step_results(lines: list[str]) -> list[str]:
    return [line.rsplit("=", 1)[-1] if "=" in line else "" for line in lines]


@torch.no_grad()
def evaluate(model: StepsAlone, chars: Characters, problems_by_depth: dict[int, list[dict]], num_latents: int,
             n_cycles: int) -> tuple[dict, dict[str, list[dict]]]:
    """(the report of each test depth, each depth's problems with their decoded steps and answer)."""
    model.eval()
    device = model.head.weight.device
    report, generations = {}, {}
    for depth, problems in problems_by_depth.items():
        questions, mask, _ = encode_problems(problems, chars, depth, num_latents)
        decoded = model(questions.to(device), mask.to(device), depth, n_cycles).argmax(dim=-1).cpu()  # (N, depth, K)
        steps_right = torch.zeros(depth)
        all_right = 0
        records = []
        for row, problem in enumerate(problems):
            lines = [chars.decode(step.tolist()) for step in decoded[row]]
            written = problem["reasoning"].split("\n")
            results = step_results(lines)
            right = [got == want for got, want in zip(results, step_results(written))]
            steps_right += torch.tensor(right, dtype=torch.float)
            all_right += lines == written
            records.append({"question": problem["question"], "answer": problem["answer"], "steps": lines,
                            "predicted": results[-1], "correct": results[-1] == problem["answer"]})
        report[f"depth{depth}"] = {"problems": len(problems), "all_steps": 100 * all_right / len(problems),
                                   "answer": 100 * sum(r["correct"] for r in records) / len(problems),
                                   "step_results": [round(100 * v / len(problems), 1) for v in steps_right.tolist()]}
        generations[f"depth{depth}"] = records
    model.train()
    return report, generations


def test_problems(size: int) -> dict[int, list[dict]]:
    """The harness's test problems of each depth (`python -m experiments depth`; depth 1 has only 162)."""
    return {depth: make_arith(arith_test_size(depth, 0, size), depth, seed=0, split="test") for depth in TEST_DEPTHS}


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("high")
    train_rows = make_arith(args.train_size, (1, TRAIN_DEPTH), seed=args.seed, split="train", questions=args.questions)
    tests = test_problems(args.test_size)
    chars = Characters([row["question"] + row["reasoning"] for rows in [train_rows, *tests.values()] for row in rows])
    device = torch.device(args.device)
    train_steps = max(len(row["reasoning"].split("\n")) for row in train_rows)  # every row runs as many, filled
    questions, mask, targets = (t.to(device) for t in encode_problems(train_rows, chars, train_steps,
                                                                         args.num_latents))
    model = StepsAlone(len(chars.chars), args.width, args.trm_width, args.num_latents, args.n_latent_steps,
                       args.n_cycles, args.step_embedding, args.reread).to(device)
    if args.compile_thoughts is not None:  # the step is launch-bound on a GPU, as the depth task's training is
        model.trm.net.compile_layers(None if args.compile_thoughts == "default" else args.compile_thoughts)
    fill_id = chars.index[FILL]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / args.steps))))
    history, start = [], time.time()
    for step in range(1, args.steps + 1):
        if time.time() - start > args.time_limit_s:  # evaluated where it stands: the report says at which step
            print(f"time limit: stopped before step {step}", flush=True)
            break
        rows = torch.randint(len(train_rows), (args.batch_size,), device=device)
        logits = model(questions[rows], mask[rows], train_steps, args.n_cycles, args.carry_gradient)
        loss = F.cross_entropy(logits.flatten(0, 2).float(), targets[rows].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.log_every == 0 or step == args.steps or time.time() - start > args.time_limit_s:
            # over the step lines' characters: the fill, most of the targets, is learned first and says little
            written = targets[rows] != fill_id
            accuracy = (logits.argmax(-1) == targets[rows])[written].float().mean().item()
            history.append({"step": step, "loss": round(loss.item(), 4), "line_accuracy": round(accuracy, 4),
                            "seconds": round(time.time() - start, 1)})
            print(json.dumps(history[-1]), flush=True)
    report, generations = evaluate(model, chars, tests, args.num_latents, args.n_cycles)
    return {"args": vars(args), "history": history, "test": report, "generations": generations,
            "parameters": sum(p.numel() for p in model.parameters())}


def write_run(result: dict, output: Path) -> None:
    """output (JSON: all but the generations), its Markdown table beside it, and each test depth's generations in
    the folder of its name: output.json, output.md, output/depth<D>/generations.jsonl."""
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in result.items() if key != "generations"}
    output.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    output.with_suffix(".md").write_text(markdown(result) + "\n")
    for depth, records in result["generations"].items():
        write_jsonl(output.with_suffix("") / depth / "generations.jsonl", records)


def markdown(result: dict) -> str:
    lines = ["| depth | problems | every step right | answer right | each step's result right |",
             "|---|---|---|---|---|"]
    for name, row in result["test"].items():
        steps = " / ".join(f"{v:.1f}" for v in row["step_results"])
        lines.append(f"| {name[5:]} | {row['problems']} | {row['all_steps']:.1f} | {row['answer']:.1f} | {steps} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--train_size", type=int, default=50000)
    parser.add_argument("--test_size", type=int, default=300)
    parser.add_argument("--width", type=int, default=128, help="the reader's width (and the thoughts')")
    parser.add_argument("--trm_width", type=int, default=128)
    parser.add_argument("--num_latents", type=int, default=16)
    parser.add_argument("--n_latent_steps", type=int, default=4)
    parser.add_argument("--n_cycles", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--carry_gradient", action="store_true",
                        help="backpropagate through every cycle and from each step into the last (not detached)")
    parser.add_argument("--questions", choices=QUESTION_FORMS, default="complete",
                        help="the training questions' form (smollm_trm.arith): partial asks about half of them for an "
                             "earlier result, so that a step past the trained depth need not be the last instruction; "
                             "packed makes about half of the rows two problems, the second starting anew, so that a "
                             "row takes up to eight steps while no problem has more than four operations")
    parser.add_argument("--step_embedding", action="store_true",
                        help="add a learned embedding of the step's index to the recursion's input")
    parser.add_argument("--reread", action="store_true",
                        help="each step after the first: the compressor reads the question again, its queries "
                             "shifted by the last step's y (detached unless --carry_gradient)")
    parser.add_argument("--compile_thoughts", choices=COMPILE_MODES, default=None,
                        help="torch.compile the TRM's network in this mode, as the model's compile_thoughts does")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--time_limit_s", type=float, default=math.inf, help="stop training then, and evaluate")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON of the run; a Markdown table beside it, each depth's generations in a folder")
    args = parser.parse_args()
    result = train(args)
    print(markdown(result))
    if args.output is not None:
        write_run(result, args.output)


if __name__ == "__main__":
    main()
