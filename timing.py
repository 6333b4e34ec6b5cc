"""--max_steps: timing runs of any training script (time per step split into data wait and compute,
images/s, peak memory), which end the run with nothing written."""
import os
import time

import torch

from util import StepLimitReached, UserError, is_main, world_size


class TimedSteps:
    """--max_steps N: the training loader of a timing run. It times every step after the first
    WARMUP: the wait for the batch (data; with --gpu_aug, the augmentation) and the rest of the
    step (compute), synchronising the device at both ends so that queued work counts where it
    belongs. After the N-th step it prints the timings (rank 0) and ends the run by raising
    util.StepLimitReached, whose first argument is the timings."""
    WARMUP = 2

    def __init__(self, loader, args):
        if args.max_steps <= self.WARMUP:
            raise UserError(f'--max_steps must exceed the {self.WARMUP} warm-up steps, got {args.max_steps}')
        self.loader, self.args = loader, args
        self.steps, self.data, self.compute, self.images = 0, [], [], 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # sampler, dataset
        return getattr(self.loader, name)

    def now(self):
        if self.args.device.type == 'cuda':
            torch.cuda.synchronize(self.args.device)
        return time.perf_counter()

    def __iter__(self):
        start = self.now()
        batches = iter(self.loader)  # starting the workers counts as waiting for data
        for batch in batches:
            ready = self.now()
            yield batch
            done = self.now()  # the script asks for the next batch: its step is over
            self.steps += 1
            if self.steps > self.WARMUP:
                self.data.append(ready - start)
                self.compute.append(done - ready)
                self.images += len(batch[1]) * world_size()
            elif self.steps == self.WARMUP:
                reset_peak_memory(self.args.device)
            if self.steps == self.args.max_steps:
                self.finish()
            start = done

    def finish(self):
        n, total = len(self.data), sum(self.data) + sum(self.compute)
        timings = {'steps': n, 'data_ms': 1e3 * sum(self.data) / n, 'compute_ms': 1e3 * sum(self.compute) / n,
                   'images_per_s': self.images / total, 'peak_memory': peak_memory(self.args.device),
                   'step_s': [d + c for d, c in zip(self.data, self.compute)]}
        if is_main():
            what = 'CUDA max allocated' if self.args.device.type == 'cuda' else 'peak RSS of the main process'
            print(f'timing: {n} steps after {self.WARMUP} warm-up: {timings["data_ms"] + timings["compute_ms"]:.1f} '
                  f'ms/step (data {timings["data_ms"]:.1f}, compute {timings["compute_ms"]:.1f}), '
                  f'{timings["images_per_s"]:.1f} images/s, {what} {timings["peak_memory"] / 2**20:.0f} MiB', flush=True)
        raise StepLimitReached(timings)


def reset_peak_memory(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists('/proc/self/clear_refs'):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # Linux: restart the process's peak-RSS count (VmHWM)


def peak_memory(device):
    """Bytes: CUDA's max allocated, else the process's peak resident set (VmHWM, Linux)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    if not os.path.exists('/proc/self/status'):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # since the start (KiB on Linux)
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM'))
