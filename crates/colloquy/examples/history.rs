// Our version of the seed's "Session History" example, formatted and without an unneeded `mut`.
use colloquy::language::*;
#[tokio::main]
async fn main() {
    let llm = Llama::new_chat().await.unwrap();
    let chat = llm.chat();
    // Add a message to the session
    chat("Hello, world!").to_std_out().await.unwrap();
    // Get the history of the session
    let history = chat.session().unwrap().history();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].role(), MessageType::UserMessage);
    assert_eq!(history[0].content(), "Hello, world!");
}
