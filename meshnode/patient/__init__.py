"""Patient access: time-limited links that let a person without a node view, download and pass on their own
images, or upload images they were given (issue 14).

- config.py       node.toml's [patient_access] section (the organisation's policies and their defaults)
- links.py        what the public pages need from a link: LinkGrant, PatientLinks, PatientGate (interfaces)
- (more modules: the link service and its store, the code's second channel, uploads and their quarantine)

The public pages live under /p/ (meshnode.web.patient_web) and can have a listener of their own, so an
organisation can expose only them to the internet.
"""
