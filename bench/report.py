import json
def table(data): return json.dumps(data["results"], indent=0)[:5000]
def markdown(data): return table(data)
