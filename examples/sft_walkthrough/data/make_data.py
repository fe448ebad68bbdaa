"""Generate the walkthrough's tool-selection data (seeded, deterministic).

Writes train.jsonl, val/tasks.jsonl and test/tasks.jsonl next to this file:
    python examples/sft_walkthrough/data/make_data.py
Every query is unique across the three files; val/test queries never appear in train.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240611
TRAIN_PER_SLUG = 30
VAL_PER_SLUG = 2
TEST_PER_SLUG = 1
HERE = Path(__file__).resolve().parent

# The rows shown in the walkthrough: they must stay first / stay val_0.
WALKTHROUGH_TRAIN = [
    ("save a contact from this email", "OUTLOOK_CREATE_CONTACT"),
    ("edit a slack message I sent earlier", "SLACK_UPDATES_A_SLACK_MESSAGE"),
    ("create a new event on my calendar", "GOOGLECALENDAR_CREATE_EVENT"),
]
WALKTHROUGH_VAL = ("schedule a meeting on my calendar", "GOOGLECALENDAR_CREATE_EVENT")

PREFIXES = [
    "", "", "", "please ", "can you ", "could you ", "i need to ", "help me ",
    "hey, ", "quickly ", "i want to ", "go ahead and ", "would you ", "let's ",
]
SUFFIXES = ["", "", "", " please", " for me", " right now", " asap", " when you get a chance"]

# slug -> (core phrases, slug-specific context suffixes). Each core names the app or object.
TOOLS: dict[str, tuple[list[str], list[str]]] = {
    "OUTLOOK_CREATE_CONTACT": (
        ["add a new contact in outlook", "create an outlook contact", "save this person to my outlook contacts",
         "add this sender to my address book", "store a new contact with their phone number",
         "put this email address in my contacts", "make a contact card in outlook"],
        [" for my new colleague", " from the signature", " named jordan lee"],
    ),
    "SLACK_UPDATES_A_SLACK_MESSAGE": (
        ["fix a typo in my slack message", "update the message I posted in slack",
         "change the text of my last slack message", "edit what I wrote in the slack thread",
         "correct my previous slack post", "reword a slack message I already sent"],
        [" in #general", " from this morning", " to add the link"],
    ),
    "SLACK_SENDS_A_MESSAGE_TO_A_SLACK_CHANNEL": (
        ["post a message in the slack channel", "send a note to the team on slack",
         "drop a message into #random on slack", "announce the release in a slack channel",
         "write a new slack message to #engineering", "share an update with the slack channel"],
        [" about the outage", " saying we are live", " with the meeting notes"],
    ),
    "GOOGLECALENDAR_CREATE_EVENT": (
        ["add an event to my google calendar", "book a slot on my calendar",
         "put a meeting on the calendar", "create a calendar invite", "block time on my calendar",
         "set up a calendar event"],
        [" for friday at 3pm", " next tuesday", " with the design team"],
    ),
    "GOOGLECALENDAR_DELETE_EVENT": (
        ["delete the event from my calendar", "remove that meeting from my google calendar",
         "cancel the calendar event", "clear the appointment off my calendar",
         "drop the calendar entry"],
        [" on thursday", " for tomorrow morning", " with the vendor"],
    ),
    "GMAIL_SEND_EMAIL": (
        ["send an email with gmail", "email my manager", "shoot an email to the client",
         "send a gmail message", "write and send an email", "mail the report over email"],
        [" about the deadline", " to alex@example.com", " with the quarterly numbers"],
    ),
    "GMAIL_CREATE_EMAIL_DRAFT": (
        ["draft an email in gmail", "save an email draft", "prepare a gmail draft but don't send it",
         "start a draft reply in gmail", "write an email draft for later"],
        [" to the landlord", " about the invoice", " for review"],
    ),
    "GITHUB_CREATE_AN_ISSUE": (
        ["open a github issue", "file a bug on github", "create an issue in the github repo",
         "report this bug as a github issue", "log a new issue on github"],
        [" about the login crash", " for the flaky test", " in the api repo"],
    ),
    "GITHUB_CREATE_A_REPOSITORY": (
        ["create a new github repository", "make a repo on github", "start a new git repo on github",
         "set up a private github repository", "initialize a fresh repo in my github account"],
        [" for the side project", " called data-tools", " for the hackathon"],
    ),
    "NOTION_CREATE_A_PAGE": (
        ["create a notion page", "add a new page in notion", "start a notion doc",
         "make a page in my notion workspace", "write up notes on a new notion page"],
        [" for the project plan", " under team wiki", " for meeting notes"],
    ),
    "GOOGLESHEETS_CREATE_GOOGLE_SHEET": (
        ["create a new spreadsheet", "make a google sheet", "start a new google sheets file",
         "set up a spreadsheet", "open a blank spreadsheet in google sheets"],
        [" for the budget", " to track expenses", " for inventory"],
    ),
    "GOOGLEDRIVE_UPLOAD_FILE": (
        ["upload a file to google drive", "put this file on my drive", "save the attachment to google drive",
         "back up this pdf to drive", "push the document up to my google drive"],
        [" in the shared folder", " from my desktop", " for the team"],
    ),
    "GOOGLEDOCS_CREATE_DOCUMENT": (
        ["create a google doc", "start a new google docs document", "make a blank google doc",
         "write a new document in google docs", "open a fresh google doc"],
        [" for the proposal", " called meeting minutes", " to draft the essay"],
    ),
    "TRELLO_CREATE_CARD": (
        ["add a card to trello", "create a trello card", "put a new card on the trello board",
         "make a trello card in the doing list", "track this on trello as a card"],
        [" for the redesign", " under backlog", " for the bug bash"],
    ),
    "JIRA_CREATE_ISSUE": (
        ["create a jira ticket", "open a ticket in jira", "log this in jira",
         "file a jira story", "raise a jira bug ticket"],
        [" for the sprint", " in the platform project", " about the timeout"],
    ),
    "ASANA_CREATE_A_TASK": (
        ["create a task in asana", "add an asana task", "assign a new asana task",
         "put this on asana as a task", "make an asana task for the project"],
        [" due next week", " for the marketing team", " to review copy"],
    ),
    "TODOIST_CREATE_TASK": (
        ["add this to my todoist", "create a todoist item", "put a reminder in todoist",
         "add an item to my to-do list in todoist", "make a todoist task"],
        [" to buy milk", " for tomorrow", " to call the dentist"],
    ),
    "ZOOM_CREATE_A_MEETING": (
        ["set up a zoom meeting", "create a zoom call", "start a zoom video meeting link",
         "host a zoom meeting", "generate a zoom link"],
        [" for the interview", " with the client", " at noon"],
    ),
    "DISCORD_SEND_MESSAGE": (
        ["send a message on discord", "post in the discord server", "write to my discord channel",
         "ping the discord group", "drop a note in discord"],
        [" about game night", " to the mods", " with the patch notes"],
    ),
    "HUBSPOT_CREATE_CONTACT": (
        ["add a lead to hubspot", "create a contact in the hubspot crm", "log this prospect in hubspot",
         "save a new crm contact in hubspot", "put this customer into hubspot"],
        [" from the trade show", " for sales", " with their company name"],
    ),
    "SPOTIFY_ADD_ITEMS_TO_PLAYLIST": (
        ["add this song to my spotify playlist", "put a track on my playlist in spotify",
         "save this tune to a spotify playlist", "add songs to the workout playlist on spotify",
         "queue this album into my spotify playlist"],
        [" for the road trip", " called chill", " for the party"],
    ),
    "DROPBOX_CREATE_FOLDER": (
        ["create a folder in dropbox", "make a new dropbox folder", "add a directory to my dropbox",
         "set up a shared dropbox folder", "organize dropbox with a new folder"],
        [" for the photos", " named contracts", " for the clients"],
    ),
    "TWITTER_CREATION_OF_A_POST": (
        ["post a tweet", "tweet this announcement", "publish a post on twitter",
         "share this on twitter", "write a tweet on x"],
        [" about the launch", " with a link to the blog", " for our followers"],
    ),
    "YOUTUBE_SEARCH_YOU_TUBE": (
        ["search youtube for a video", "find a youtube video", "look up a tutorial on youtube",
         "find clips on youtube", "search for a video on youtube"],
        [" about sourdough", " on python decorators", " of the keynote"],
    ),
    "WEATHERMAP_WEATHER": (
        ["check the weather", "get the weather forecast", "find out if it will rain",
         "look up the current temperature", "see the weather report"],
        [" in paris", " tomorrow", " this weekend"],
    ),
    "STRIPE_CREATE_INVOICE": (
        ["create an invoice in stripe", "bill the customer with a stripe invoice", "send a stripe invoice",
         "generate an invoice through stripe", "make a new invoice on stripe"],
        [" for $500", " for the consulting hours", " for acme corp"],
    ),
}


def _queries(rng: random.Random, slug: str, n: int, used: set[str]) -> list[str]:
    """`n` new queries for `slug`, cycling its cores with random prefixes/suffixes."""
    cores, contexts = TOOLS[slug]
    suffixes = SUFFIXES + contexts
    order = cores[:]
    rng.shuffle(order)
    out: list[str] = []
    i = 0
    while len(out) < n:
        core = order[i % len(order)]
        i += 1
        q = rng.choice(PREFIXES) + core + rng.choice(suffixes)
        if q not in used:
            used.add(q)
            out.append(q)
        if i > 1000 * n:
            raise RuntimeError(f"not enough distinct queries for {slug}")
    return out


def build() -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, val tasks, test tasks), deterministic for SEED."""
    rng = random.Random(SEED)
    used = {q for q, _ in WALKTHROUGH_TRAIN} | {WALKTHROUGH_VAL[0]}
    train, val, test = [], [], []
    for slug in TOOLS:
        fixed_train = [q for q, s in WALKTHROUGH_TRAIN if s == slug]
        fixed_val = [WALKTHROUGH_VAL[0]] if WALKTHROUGH_VAL[1] == slug else []
        train += [(q, slug) for q in _queries(rng, slug, TRAIN_PER_SLUG - len(fixed_train), used)]
        val += [(q, slug) for q in _queries(rng, slug, VAL_PER_SLUG - len(fixed_val), used)]
        test += [(q, slug) for q in _queries(rng, slug, TEST_PER_SLUG, used)]
    rng.shuffle(train)
    rng.shuffle(val)
    rng.shuffle(test)
    train = WALKTHROUGH_TRAIN + train
    val = [WALKTHROUGH_VAL] + val
    train_rows = [{"query": q, "tool_slug": s} for q, s in train]
    val_tasks = [_task(f"val_{i}", q, {"fn_name": "contains", "expected": f"<answer>{s}</answer>"})
                 for i, (q, s) in enumerate(val)]
    test_tasks = [_task(f"test_{i}", q, {"fn_name": "answer_tag", "expected": s})
                  for i, (q, s) in enumerate(test)]
    return train_rows, val_tasks, test_tasks


def _task(task_id: str, query: str, verifier: dict) -> dict:
    instruction = f"Query: {query}\nReply with the tool slug inside <answer></answer>."
    return {"task_id": task_id, "instruction": instruction, "verifier": {"kind": "in_process", **verifier}}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    train, val, test = build()
    _write(HERE / "train.jsonl", train)
    _write(HERE / "val" / "tasks.jsonl", val)
    _write(HERE / "test" / "tasks.jsonl", test)
    print(f"train={len(train)} val={len(val)} test={len(test)} slugs={len(TOOLS)}")


if __name__ == "__main__":
    main()
