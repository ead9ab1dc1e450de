"""The local Kaggle: a server that speaks Kaggle's API wire format to the unmodified `kaggle` client, and a
kernel runner with Kaggle's mounts, no network and the session time limit.

    server.py          HTTP: RPC routing, blob uploads (resumable PUT), file downloads, admin endpoints
    rpc.py             the route registry and the error type; handlers per service:
    kernels_api.py     SaveKernel, GetKernelSessionStatus, ListKernelSessionOutput, GetKernel, ListKernels, ...
    datasets_api.py    StartBlobUpload, CreateDataset(Version), GetDatasetStatus, files, downloads
    competitions_api.py  file and code submissions, ListSubmissions, data files
    security_api.py    IntrospectToken
    scheduler.py       every accepted session runs at once (SaveKernel refuses over the session caps)
    runner.py          one kernel session in a sandbox (see its docstring)
    sandbox.py         the sandbox's root, one list of mounts that bubblewrap and netns.py (kpack's own) both build
    image.py           what a local kernel can import: this venv minus local-image-excludes.txt
    store.py           all state on disk under the root, written atomically
    scoring.py         a competition's metric (F2 per row, accuracy, RMSE, MAE, AUC, log loss), Public / Private
    faults.py          fault injection and counters for tests
    client_env.py      the environment that points a client at the server; ensure_server()
    cli.py             `kpack local serve | env | competition create | secret set`
"""
