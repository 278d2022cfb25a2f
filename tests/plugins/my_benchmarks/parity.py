"""A benchmark of one's own, outside tokreason: is a count of words odd or even? Examples with an
answer (exact match of the greedy generation) and two choices (likelihood accuracy), drawn from
the eval seed; its settings are its eval.sources.<name> entry (here `num`)."""
import random

from tokreason.experiments.evaluation.benchmarks import ExampleBenchmark
from tokreason.experiments.evaluation.tasks import Benchmark, Example


class Parity(ExampleBenchmark):
    def load(self, cfg) -> Benchmark:
        rng = random.Random(f"parity|{int(cfg.eval.seed)}")
        num = int(cfg.eval.limit or self.settings.get("num", 20))
        examples = []
        for i in range(num):
            words = rng.randint(1, 9)
            answer = "even" if words % 2 == 0 else "odd"
            prompt = " ".join(["step"] * words) + ". The count of steps is"
            examples.append(Example(id=f"parity-{i}", prompt=prompt, answer=answer, choices=(" even", " odd"),
                                    gold=0 if answer == "even" else 1))
        return Benchmark(self.name, examples, extract=lambda text: text.strip() or None, max_new_tokens=3,
                         stop=("\n", "."), description="parity of a count of words")
