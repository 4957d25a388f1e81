// Our version of the seed's "Saving and Loading Sessions" example, without its unused imports and `mut`s.
use colloquy::language::*;

#[tokio::main]
async fn main() {
    let llm = Llama::new_chat().await.unwrap();
    let chat = llm.chat();

    // Feed some text into the session
    chat("What is the capital of France?").to_std_out().await.unwrap();

    // Save the session to bytes
    let session = chat.session().unwrap();
    let session_as_bytes = session.to_bytes().unwrap();

    // Load the session from bytes
    let session = LlamaChatSession::from_bytes(&session_as_bytes).unwrap();
    let chat = llm.chat().with_session(session);

    // Feed some more text into the session
    chat("What was my first question?").to_std_out().await.unwrap();
}
