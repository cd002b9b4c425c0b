"""Score pairs with the Python client. Start a server first: `reward-serve --model-store model_store`.

python examples/client_quickstart.py http://127.0.0.1:8000
"""

import asyncio
import sys

from app.client import AsyncRewardClient, RewardClient

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
PROMPTS = ["\n\nHuman: How do I boil an egg?\n\nAssistant:"] * 2
RESPONSES = ["Put it in boiling water for eight minutes, then cool it in cold water.", "No."]

with RewardClient(URL, namespace="quickstart", normalize="none") as client:
    print("sync: ", client.score_batch(PROMPTS, RESPONSES))


async def main() -> None:
    async with AsyncRewardClient(URL, namespace="quickstart", chunk_size=64) as client:
        print("async:", await client.score_batch(PROMPTS, RESPONSES))


asyncio.run(main())
