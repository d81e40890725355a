"""mriae.train.engine.SupervisedTrainer: MONAI's trainer without the per-iteration train() walk."""

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler

from mriae.train.engine import SupervisedTrainer


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.out = torch.nn.Conv2d(4, 1, 1)
        self.walks = 0

    def train(self, mode: bool = True):
        self.walks += 1
        return super().train(mode)

    def forward(self, x):
        return self.out(self.bn(self.conv(x)))


def _data(n=6):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(2, 1, 8, 8, generator=g), "label": torch.rand(2, 1, 8, 8, generator=g)} for _ in range(n)]


def _trainer(cls, net, evaluator=None, epochs=3):
    torch.manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return cls(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_data(), network=net, optimizer=opt,
        loss_function=torch.nn.MSELoss(), decollate=False,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)] if evaluator else None,
    )


def test_trainer_walks_modules_only_after_validation_and_trains_the_same():
    from monai.engines import SupervisedTrainer as MonaiTrainer

    weights = {}
    for cls in (SupervisedTrainer, MonaiTrainer):
        torch.manual_seed(0)
        net = Net()
        evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=_data(2), network=net, decollate=False)
        trainer = _trainer(cls, net, evaluator, epochs=3)
        modes = []
        trainer.add_event_handler(
            IterationEvents.FORWARD_COMPLETED, lambda e: modes.append((e.network.training, e.network.bn.training))
        )
        net.eval()  # as validation leaves it: the first iteration must put it back in training mode
        net.walks = 0
        trainer.run()
        assert modes == [(True, True)] * 18  # batch norm in training mode at every iteration
        weights[cls.__name__ + ("" if cls is SupervisedTrainer else "_monai")] = net.out.weight.detach().clone()
        walks = net.walks
        # the evaluator walks twice per batch (MONAI's eval_mode: eval(), then back to train()): 2 x 2 x 3
        if cls is SupervisedTrainer:
            assert walks == 1 + 12  # the trainer: once, to leave the eval mode it was handed
        else:
            assert walks == 18 + 12  # MONAI's trainer: at every one of the 18 iterations
        assert "train" not in net.__dict__  # the shadowing is undone after each iteration
        if cls is SupervisedTrainer:  # not decollated, shaped as if it were: MONAI's from_engine reads it
            from monai.handlers import from_engine

            out = trainer.state.output
            assert isinstance(out, list) and len(out) == 1 and out[0]["pred"].shape == (2, 1, 8, 8)
            loss = from_engine(["loss"], first=True)(out)
            assert loss.ndim == 0 and float(loss) > 0
    assert torch.equal(weights["SupervisedTrainer"], weights["SupervisedTrainer_monai"])


def test_eval_inside_an_iteration_still_works():
    net = Net()
    trainer = _trainer(SupervisedTrainer, net, epochs=1)
    seen = []

    def freeze_bn(e):
        e.network.eval()
        seen.append(e.network.bn.training)

    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, freeze_bn)
    trainer.run()
    assert seen and not any(seen)
    assert not net.training  # it stays as the handler left it until something calls train()
