from gateway.chat_template import render_chat
from gateway.tokenizer import ByteTokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the failing test."},
]
TURN = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "print('hi')"},
]
TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]


def test_next_turn_renders_to_an_extension_of_the_previous_prompt():
    first = render_chat(CONVERSATION, TOOLS)
    second = render_chat(CONVERSATION + TURN, TOOLS)
    assert second.startswith(first)
    assert "<tool_call>" in second and '<tool_response id="c1">' in second


def test_tools_come_first_and_attachments_render_by_digest():
    text = render_chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look: "},
                    {"type": "image_url", "image_url": {"url": "data:a"}},
                ],
            }
        ],
        TOOLS,
    )
    other = render_chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look: "},
                    {"type": "image_url", "image_url": {"url": "data:b"}},
                ],
            }
        ],
        TOOLS,
    )
    assert text.index("# Tools") < text.index("look: ")
    assert text != other and "<|image_url:" in text


def test_byte_tokenizer_is_exact_stable_and_four_bytes_per_token():
    tokenizer = ByteTokenizer()
    text = render_chat(CONVERSATION + TURN, TOOLS) + "naïve ✓"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) == tokenizer.count(text) == -(-len(text.encode()) // 4)
    assert ids[:3] == ByteTokenizer().encode(text)[:3]
    assert all(0 <= i < 2**32 for i in ids)
