// Our version of the seed's "Cloning Sessions" example, without its unused imports and `mut`s.
use colloquy::language::*;
#[tokio::main]
async fn main() {
    let llm = Llama::new_chat().await.unwrap();
    let chat = llm.chat();
    // Feed some text into the session
    chat("What is the capital of France?").to_std_out().await.unwrap();
    let session = chat.session().unwrap();
    // Clone the session
    let cloned_session = session.try_clone().unwrap();
    // Feed some more text into the cloned session
    let chat = llm.chat().with_session(cloned_session);
    chat("What was my first question?").to_std_out().await.unwrap();
}
