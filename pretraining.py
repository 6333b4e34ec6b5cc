"""The bookkeeping around every pretraining epoch, shared by main_supcon, main_moco, main_sce and
main_clsa: resume, the epoch log, the kNN monitor and the checkpoint with the method's extra state."""
import checkpoints
import util
from evaluation import KNNMonitor


class Run:
    """Makes the gradient scaler of --amp fp16 (`scaler`) and resumes `ckpt` (None: starts at epoch 1,
    measuring the random trunk when the kNN monitor is on); after each epoch, end_epoch() logs it,
    runs the monitor when due and saves last.pth. `state`: the method's extra modules by name
    (queue, momentum encoder), saved and restored with the model."""

    def __init__(self, args, ckpt, method, model, optimizer, knn_loaders, state=None):
        self.args, self.method, self.model, self.optimizer, self.state = args, method, model, optimizer, state
        self.scaler = util.grad_scaler(args)
        self.start_epoch = checkpoints.restore(ckpt, args, model, optimizer, self.scaler, method, state)
        self.logger = util.Logger(args.tb_folder, args)
        self.knn = KNNMonitor(knn_loaders, util.unwrap(model).encoder, args, self.logger, self.start_epoch)

    def epochs(self):
        return range(self.start_epoch, self.args.epochs + 1)

    def end_epoch(self, epoch, progress, **scalars):
        """`scalars`: what else the epoch line and TensorBoard show (momentum)."""
        self.logger.epoch(epoch, progress, learning_rate=self.optimizer.param_groups[0]['lr'], **scalars)
        self.knn(epoch)
        checkpoints.save_epoch(self.args, epoch, method=self.method, model=self.model, optimizer=self.optimizer,
                               scaler=self.scaler, state=self.state)
