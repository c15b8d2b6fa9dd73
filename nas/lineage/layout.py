"""What a run holds, by name: the kinds of runs and the files they carry.

Shared by the code that writes runs and the code that reads them back, and by callers that
tell a refined final run from a search's trials.
"""

KIND_SEARCH = "search"
KIND_TRIAL = "trial"
KIND_FINAL = "final"  # a refined winner trained on train+val: its val metrics are in-sample
KIND_PREDICTOR = "predictor"  # a performance predictor fitted on trials (`nas predictor fit`)
KIND_LEARNED_OPTIMIZER = "learned-optimizer"  # an LSTM optimiser trained by `nas meta-train`
KIND_DATA = "data"  # a prepared data set's files, for cluster workers that do not share the project's disk

EVALUATION_FILE = "evaluation.json"
ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"  # weights, optimizer and RNG states of a run that can be continued
CONFIG_FILE = "config.json"
CELL_DRAWING_FILE = "cell.png"  # the tree of a network's recurrent cell (nas.reports.draw_cell)
PREDICTOR_FILE = "predictor/predictor.safetensors"  # nas.predictor.Predictor.to_bytes
LEARNED_OPTIMIZER_FILE = "learned_optimizer/optimizer.safetensors"  # nas.learned_opt.to_bytes
DATA_FOLDER = "data"  # the files of a KIND_DATA run: train/val/test Parquet and meta.json
TOLD_FILE = "loop/told.json"  # a search's results by run id: those found under another search too
STRATEGY_REPORT_FILE = "strategy-report.json"  # a search's strategy state for people (Strategy.report)
